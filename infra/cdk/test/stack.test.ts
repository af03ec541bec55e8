// Assertions on the synthesized template: functions, rules, queues, table keys and indexes, API
// routes with IAM auth, and the IAM conditions that keep Tether to what it tagged; and on both
// stacks (SAM and CDK): the concurrency share's split, the queues' visibility timeouts, the
// event source mappings, the queue policies created before their rules. Stub code assets: no
// release build is needed to synthesize.

import { test } from "node:test";
import * as assert from "node:assert/strict";
import { Match } from "aws-cdk-lib/assertions";
import { CONCURRENCY_SHARES } from "../lib/tether-stack";
import { cdkTemplate, cdkView, logicalId, resolve, samView } from "./templates";

const template = cdkTemplate();

/** The event queues' condition: EventBridge rules of this account (not the queue's own rule by
 * ARN, which would make the policy wait for the rule: see the README's upgrade section). */
const EVENTBRIDGE_FROM_THIS_ACCOUNT = {
  StringEquals: { "aws:SourceAccount": { Ref: "AWS::AccountId" } },
  ArnLike: { "aws:SourceArn": { "Fn::Sub": "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:rule/*" } },
};

test("four functions on provided.al2023, the architecture a parameter (arm64 by default)", () => {
  template.resourceCountIs("AWS::Lambda::Function", 4);
  for (const name of ["InterruptionFunction", "StateChangeFunction", "ReconcilerFunction", "ApiFunction"]) {
    const fn = template.toJSON().Resources[name];
    assert.ok(fn, `${name} exists`);
    assert.equal(fn.Properties.Runtime, "provided.al2023");
    assert.equal(fn.Properties.Handler, "bootstrap");
    assert.deepEqual(fn.Properties.Architectures, [{ Ref: "Architecture" }]);
    assert.deepEqual(fn.Properties.Environment.Variables.TETHER_TABLE_NAME, { Ref: "NodesTable" });
  }
  template.hasParameter("Architecture", { Default: "arm64", AllowedValues: ["arm64", "x86_64"] });
});

test("EventBridge rules for the EC2 and AWS Health detail types to their queues and the reconciler's schedule to its function, each with a dead-letter queue", () => {
  template.hasResourceProperties("AWS::Events::Rule", {
    EventPattern: {
      $or: [
        { source: ["aws.ec2"], "detail-type": ["EC2 Spot Instance Interruption Warning", "EC2 Instance Rebalance Recommendation"] },
        { source: ["aws.health"], "detail-type": ["AWS Health Event"], detail: { service: ["EC2"], eventTypeCategory: ["scheduledChange"] } },
      ],
    },
    Targets: [Match.objectLike({ Arn: { "Fn::GetAtt": ["InterruptionQueue", "Arn"] }, DeadLetterConfig: { Arn: { "Fn::GetAtt": ["InterruptionDeadLetterQueue", "Arn"] } } })],
  });
  template.hasResourceProperties("AWS::Events::Rule", {
    EventPattern: { source: ["aws.ec2"], "detail-type": ["EC2 Instance State-change Notification"] },
    Targets: [Match.objectLike({ Arn: { "Fn::GetAtt": ["StateChangeQueue", "Arn"] }, DeadLetterConfig: { Arn: { "Fn::GetAtt": ["StateChangeDeadLetterQueue", "Arn"] } } })],
  });
  template.hasResourceProperties("AWS::Events::Rule", {
    ScheduleExpression: "rate(1 minute)",
    Targets: [Match.objectLike({ Arn: { "Fn::GetAtt": ["ReconcilerFunction", "Arn"] } })],
  });
  template.resourceCountIs("AWS::SQS::Queue", 5);
  template.resourceCountIs("AWS::Lambda::EventSourceMapping", 2);
  template.resourcePropertiesCountIs("AWS::CloudWatch::Alarm", { Namespace: "AWS/SQS", MetricName: "ApproximateNumberOfMessagesVisible" }, 3);
  template.resourcePropertiesCountIs("AWS::CloudWatch::Alarm", { Namespace: "AWS/SQS", MetricName: "ApproximateAgeOfOldestMessage", Threshold: 900 }, 2);
  template.resourcePropertiesCountIs("AWS::CloudWatch::Alarm", { Namespace: "AWS/Lambda", MetricName: "Errors" }, 4);
  template.resourcePropertiesCountIs("AWS::CloudWatch::Alarm", { Namespace: "Tether", MetricName: "Errors" }, 1);
});

test("the table: pk, the by-instance, by-group and by-kind indexes, on-demand, point-in-time recovery, TTL, retained", () => {
  const all = { ProjectionType: "ALL" };
  template.hasResource("AWS::DynamoDB::Table", {
    DeletionPolicy: "Retain",
    Properties: {
      BillingMode: "PAY_PER_REQUEST",
      AttributeDefinitions: [
        { AttributeName: "pk", AttributeType: "S" },
        { AttributeName: "instance_id", AttributeType: "S" },
        { AttributeName: "group_id", AttributeType: "S" },
        { AttributeName: "kind", AttributeType: "S" },
      ],
      KeySchema: [{ AttributeName: "pk", KeyType: "HASH" }],
      // On-demand like the table: no ProvisionedThroughput on any index.
      GlobalSecondaryIndexes: [
        { IndexName: "by-instance", KeySchema: [{ AttributeName: "instance_id", KeyType: "HASH" }], Projection: all },
        { IndexName: "by-group", KeySchema: [{ AttributeName: "group_id", KeyType: "HASH" }], Projection: all },
        // Sparse: node items only (they alone carry `kind`), in pk order.
        {
          IndexName: "by-kind",
          KeySchema: [
            { AttributeName: "kind", KeyType: "HASH" },
            { AttributeName: "pk", KeyType: "RANGE" },
          ],
          Projection: all,
        },
      ],
      PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true },
      TimeToLiveSpecification: { AttributeName: "expires_at", Enabled: true },
    },
  });
});

test("every API route needs IAM auth", () => {
  const routes = template.findResources("AWS::ApiGatewayV2::Route");
  assert.equal(Object.keys(routes).length, 22);
  for (const route of Object.values(routes)) {
    assert.equal((route as { Properties: { AuthorizationType: string } }).Properties.AuthorizationType, "AWS_IAM");
  }
});

test("mutating EC2 actions are scoped by Tether's tag; PassRole only for the role parameter", () => {
  const statements: Record<string, { Action: string | string[]; Resource: unknown; Condition?: object }> = {};
  const policy = template.toJSON().Resources.TetherEc2Policy.Properties.PolicyDocument.Statement;
  for (const s of policy) {
    if (s.Sid) statements[s.Sid] = s;
  }
  assert.deepEqual(statements.ChangeTaggedResources.Condition, { StringEquals: { "ec2:ResourceTag/tether:managed": "true" } });
  assert.deepEqual(statements.LaunchTaggedInstance.Condition, { StringEquals: { "aws:RequestTag/tether:managed": "true" } });
  assert.deepEqual(statements.LaunchOnTaggedEni.Condition, { StringEquals: { "ec2:ResourceTag/tether:managed": "true" } });
  // "*" only for the reads, which AWS does not scope, and DeleteSubnetCidrReservation, which
  // AWS authorizes on no resource.
  for (const s of policy) {
    if (s.Resource === "*") {
      const actions = Array.isArray(s.Action) ? s.Action : [s.Action];
      const unscoped = (a: string) => a.startsWith("ec2:Describe") || a === "ec2:GetSubnetCidrReservations" || a === "ec2:DeleteSubnetCidrReservation";
      assert.ok(actions.every(unscoped), `"*" on ${actions}`);
    }
  }
  const passRole = policy.find((s: { "Fn::If"?: unknown[] }) => s["Fn::If"])["Fn::If"];
  assert.equal(passRole[0], "HasInstanceRole");
  assert.deepEqual(passRole[1].Resource, { Ref: "InstanceRoleArn" });
  // The table and each of its indexes (every index the table defines, no other).
  const indexes = template.toJSON().Resources.NodesTable.Properties.GlobalSecondaryIndexes.map((i: { IndexName: string }) => i.IndexName);
  assert.deepEqual(indexes, ["by-instance", "by-group", "by-kind"]);
  template.hasResourceProperties("AWS::IAM::ManagedPolicy", {
    PolicyDocument: {
      Statement: [
        Match.objectLike({
          Resource: [{ "Fn::GetAtt": ["NodesTable", "Arn"] }, ...indexes.map((name: string) => ({ "Fn::Sub": `\${NodesTable.Arn}/index/${name}` }))],
        }),
      ],
    },
  });
});

test("the event queues: SSE-SQS, 4 days, redriven to their dead-letter queue after 5 receives; EventBridge may send from this account's rules only", () => {
  for (const name of ["Interruption", "StateChange"]) {
    template.hasResourceProperties("AWS::SQS::Queue", {
      SqsManagedSseEnabled: true,
      MessageRetentionPeriod: 345600,
      RedrivePolicy: { deadLetterTargetArn: { "Fn::GetAtt": [`${name}DeadLetterQueue`, "Arn"] }, maxReceiveCount: 5 },
    });
    template.hasResourceProperties("AWS::SQS::QueuePolicy", {
      Queues: [{ Ref: `${name}Queue` }],
      PolicyDocument: {
        Statement: [
          {
            Sid: "EventBridgeRule",
            Effect: "Allow",
            Principal: { Service: "events.amazonaws.com" },
            Action: "sqs:SendMessage",
            Resource: { "Fn::GetAtt": [`${name}Queue`, "Arn"] },
            Condition: EVENTBRIDGE_FROM_THIS_ACCOUNT,
          },
        ],
      },
    });
  }
});

// ---- both stacks ----

/** The logical ids a value names: `Ref`, `Fn::GetAtt`, and `${Id}` / `${Id.Attr}` in `Fn::Sub`. */
function references(value: any): string[] {
  if (Array.isArray(value)) return value.flatMap(references);
  if (!value || typeof value !== "object") return [];
  const named: string[] = [];
  if (typeof value.Ref === "string") named.push(value.Ref);
  if (Array.isArray(value["Fn::GetAtt"])) named.push(value["Fn::GetAtt"][0]);
  const sub = value["Fn::Sub"];
  const text = Array.isArray(sub) ? sub[0] : sub;
  if (typeof text === "string") named.push(...[...text.matchAll(/\$\{([^}.!]+)[^}]*\}/g)].map((m) => m[1]));
  return [...named, ...Object.values(value).flatMap(references)].filter((id) => !id.startsWith("AWS::"));
}

const stacks = [samView(), cdkView(template.toJSON())];
const QUEUED = { InterruptionFunction: "InterruptionQueue", StateChangeFunction: "StateChangeQueue" };

for (const stack of stacks) {
  test(`${stack.name}: the concurrency settings equal the parameter, for every allowed share`, () => {
    const parameter = stack.template.Parameters.ConcurrencyShare;
    assert.equal(parameter.Type, "Number");
    assert.equal(parameter.Default, "10");
    assert.deepEqual(parameter.AllowedValues, Object.keys(CONCURRENCY_SHARES));
    const at = (share: string) => {
      const parameters = { ConcurrencyShare: share };
      return {
        stateChange: resolve(stack.template, stack.queueMapping("StateChangeFunction")!.ScalingConfig.MaximumConcurrency, parameters),
        interruption: resolve(stack.template, stack.queueMapping("InterruptionFunction")!.ScalingConfig.MaximumConcurrency, parameters),
        reconciler: resolve(stack.template, stack.reservedConcurrency("ReconcilerFunction"), parameters),
      };
    };
    for (const share of parameter.AllowedValues) {
      const split = at(share);
      assert.equal(split.stateChange + split.interruption + split.reconciler, Number(share), `share ${share}: ${JSON.stringify(split)}`);
      for (const maximum of [split.stateChange, split.interruption]) {
        assert.ok(Number.isInteger(maximum) && maximum >= 2 && maximum <= 1000, `share ${share}: MaximumConcurrency ${maximum} (AWS: 2 to 1000)`);
      }
      assert.ok(Number.isInteger(split.reconciler) && split.reconciler >= 1, `share ${share}: reconciler ${split.reconciler}`);
      assert.ok(split.stateChange >= split.interruption, `share ${share}: state changes launch the replacements`);
    }
    // The default, as the benchmark models it.
    assert.deepEqual(at(parameter.Default), { stateChange: 7, interruption: 2, reconciler: 1 });
    assert.equal(stack.reservedConcurrency("ApiFunction"), undefined, "the API is not counted");
    assert.equal(stack.reservedConcurrency("InterruptionFunction"), undefined);
    assert.equal(stack.reservedConcurrency("StateChangeFunction"), undefined);
  });

  test(`${stack.name}: each event rule waits for its queue's policy, which names no rule (the permission exists before the rule sends to the queue)`, () => {
    const resources = stack.template.Resources;
    for (const queue of Object.values(QUEUED)) {
      const name = queue.replace(/Queue$/, "");
      const policy = resources[`${name}QueuePolicy`];
      assert.equal(policy.Type, "AWS::SQS::QueuePolicy");
      assert.deepEqual(policy.Properties.Queues, [{ Ref: queue }]);
      const [statement, ...others] = policy.Properties.PolicyDocument.Statement;
      assert.deepEqual(others, []);
      assert.deepEqual(statement.Principal, { Service: "events.amazonaws.com" });
      assert.equal(statement.Action, "sqs:SendMessage");
      assert.deepEqual(statement.Condition, EVENTBRIDGE_FROM_THIS_ACCOUNT);
      // Nothing in the policy waits for a rule: neither a reference nor a DependsOn.
      const waitsFor = [...references(policy.Properties), ...([] as string[]).concat(policy.DependsOn ?? [])];
      assert.deepEqual(waitsFor.filter((id) => resources[id]?.Type === "AWS::Events::Rule"), [], `${stack.name} ${name}QueuePolicy waits for a rule`);
      const rule = resources[`${name}Rule`];
      assert.equal(logicalId(rule.Properties.Targets[0].Arn), queue);
      assert.ok(([] as string[]).concat(rule.DependsOn ?? []).includes(`${name}QueuePolicy`), `${stack.name} ${name}Rule does not wait for ${name}QueuePolicy`);
    }
  });

  test(`${stack.name}: each queue's visibility timeout is 6 × its function's timeout; the mappings report batch item failures`, () => {
    for (const [fn, queue] of Object.entries(QUEUED)) {
      const mapping = stack.queueMapping(fn)!;
      assert.ok(mapping, `${fn} has an SQS event source mapping`);
      assert.equal(logicalId(mapping.EventSourceArn), queue);
      assert.equal(stack.template.Resources[queue].Properties.VisibilityTimeout, 6 * stack.timeout(fn));
      assert.deepEqual(mapping.FunctionResponseTypes, ["ReportBatchItemFailures"]);
      assert.equal(mapping.BatchSize, 10);
      assert.equal(mapping.MaximumBatchingWindowInSeconds, 0);
    }
    assert.equal(stack.timeout("InterruptionFunction"), 30);
    assert.equal(stack.timeout("StateChangeFunction"), 90);
    assert.equal(stack.queueMapping("ReconcilerFunction"), undefined);
    assert.equal(stack.queueMapping("ApiFunction"), undefined);
  });
}
