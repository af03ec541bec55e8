// Assertions on the synthesized template: functions, rules, table keys and index, API routes
// with IAM auth, and the IAM conditions that keep Tether to what it tagged. Stub code assets:
// no release build is needed to synthesize.

import { test } from "node:test";
import * as assert from "node:assert/strict";
import { Match } from "aws-cdk-lib/assertions";
import { cdkTemplate } from "./templates";

const template = cdkTemplate();

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

test("EventBridge rules for the three detail types and the reconciler's schedule, each with a dead-letter queue", () => {
  template.hasResourceProperties("AWS::Events::Rule", {
    EventPattern: { source: ["aws.ec2"], "detail-type": ["EC2 Spot Instance Interruption Warning", "EC2 Instance Rebalance Recommendation"] },
    Targets: [Match.objectLike({ Arn: { "Fn::GetAtt": ["InterruptionFunction", "Arn"] }, DeadLetterConfig: { Arn: { "Fn::GetAtt": ["InterruptionDeadLetterQueue", "Arn"] } } })],
  });
  template.hasResourceProperties("AWS::Events::Rule", {
    EventPattern: { source: ["aws.ec2"], "detail-type": ["EC2 Instance State-change Notification"] },
    Targets: [Match.objectLike({ Arn: { "Fn::GetAtt": ["StateChangeFunction", "Arn"] } })],
  });
  template.hasResourceProperties("AWS::Events::Rule", { ScheduleExpression: "rate(1 minute)" });
  template.resourceCountIs("AWS::SQS::Queue", 3);
  template.resourcePropertiesCountIs("AWS::CloudWatch::Alarm", { Namespace: "AWS/SQS", MetricName: "ApproximateNumberOfMessagesVisible" }, 3);
  template.resourcePropertiesCountIs("AWS::CloudWatch::Alarm", { Namespace: "AWS/Lambda", MetricName: "Errors" }, 4);
  template.resourcePropertiesCountIs("AWS::CloudWatch::Alarm", { Namespace: "Tether", MetricName: "Errors" }, 1);
});

test("the table: pk, the by-instance and by-group indexes, on-demand, point-in-time recovery, TTL, retained", () => {
  template.hasResource("AWS::DynamoDB::Table", {
    DeletionPolicy: "Retain",
    Properties: {
      BillingMode: "PAY_PER_REQUEST",
      KeySchema: [{ AttributeName: "pk", KeyType: "HASH" }],
      GlobalSecondaryIndexes: [
        Match.objectLike({ IndexName: "by-instance", KeySchema: [{ AttributeName: "instance_id", KeyType: "HASH" }] }),
        Match.objectLike({ IndexName: "by-group", KeySchema: [{ AttributeName: "group_id", KeyType: "HASH" }] }),
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
  template.hasResourceProperties("AWS::IAM::ManagedPolicy", {
    PolicyDocument: { Statement: [Match.objectLike({ Resource: [{ "Fn::GetAtt": ["NodesTable", "Arn"] }, { "Fn::Sub": "${NodesTable.Arn}/index/by-instance" }, { "Fn::Sub": "${NodesTable.Arn}/index/by-group" }] })] },
  });
});
