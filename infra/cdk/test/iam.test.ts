// IAM that matches the code. moto enforces no IAM, so a permission the code needs and a stack
// lacks would show only in a real account. infra/aws-operations.json lists the IAM actions each
// function's code needs (generated from the adapters' source and kept current by the Rust test
// tests/tests/emulator/iam.rs). Here, for both the SAM template and the CDK app: every one of
// them is allowed to that function, and no mutating action is allowed that no adapter calls;
// SQS actions only on the function's own queues: the re-queue's SendMessage and the event
// source mapping's receives on its event queue, Lambda's SendMessage on its dead-letter queue.

import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "fs";
import * as path from "path";
import { cdkTemplate, logicalId, samTemplate } from "./templates";

type Resources = Record<string, { Type: string; Properties?: Record<string, any> }>;
type Statement = { Effect: string; Action: string | string[]; Resource?: unknown };

const inventory: { functions: Record<string, string[]> } = JSON.parse(
  fs.readFileSync(path.resolve(__dirname, "../../../aws-operations.json"), "utf8"),
);

/** Services the adapters talk to, and the role PassRole gives EC2: their actions must be used. */
const ADAPTER_SERVICES = ["ec2", "dynamodb", "iam"];
/** Actions that read; any other action of those services changes something. */
const READ = /^(ec2:Describe|ec2:Get|dynamodb:(GetItem|BatchGetItem|Query|Scan|Describe|List)|iam:(Get|List))/;

/** A policy's statements, with `Fn::If` taken on its true branch (the stack with an instance role). */
function statements(document: { Statement: unknown[] }): Statement[] {
  return document.Statement.map((s: any) => (s["Fn::If"] ? s["Fn::If"][1] : s)).filter((s: any) => s && !s.Ref);
}

function actionsOf(s: Statement): string[] {
  return Array.isArray(s.Action) ? s.Action : [s.Action];
}

function resourcesOf(s: Statement): unknown[] {
  return Array.isArray(s.Resource) ? s.Resource : [s.Resource];
}

/** What Lambda's SQS event source mapping calls with the function's role (AWS's list); CDK's
 * grant adds ChangeMessageVisibility and GetQueueUrl. */
const MAPPING_ACTIONS = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"];
const MAPPING_GRANT_EXTRAS = ["sqs:ChangeMessageVisibility", "sqs:GetQueueUrl"];

/** `ec2:Describe*` matches `ec2:DescribeInstances`; IAM compares actions case-insensitively. */
function allows(pattern: string, action: string): boolean {
  const regex = new RegExp("^" + pattern.split("*").map((p) => p.replace(/[.+?^${}()|[\]\\]/g, "\\$&")).join(".*") + "$", "i");
  return regex.test(action);
}

/** The statements of the customer-managed policies a SAM function lists. */
function samStatements(resources: Resources, fn: string): Statement[] {
  const policies: any[] = resources[fn].Properties!.Policies ?? [];
  return policies.flatMap((p) => {
    assert.ok(p.Ref, `${fn}: only managed policies by Ref are read here, found ${JSON.stringify(p)}`);
    return statements(resources[p.Ref].Properties!.PolicyDocument);
  });
}

/** The statements of a CDK function's role: its customer-managed policies and inline policies. */
function cdkStatements(resources: Resources, fn: string): Statement[] {
  const roleId = resources[fn].Properties!.Role["Fn::GetAtt"][0];
  const managed: Statement[] = (resources[roleId].Properties!.ManagedPolicyArns ?? [])
    .filter((arn: any) => arn.Ref)
    .flatMap((arn: any) => statements(resources[arn.Ref].Properties!.PolicyDocument));
  const inline = Object.values(resources)
    .filter((r) => r.Type === "AWS::IAM::Policy" && r.Properties!.Roles.some((role: any) => role.Ref === roleId))
    .flatMap((r) => statements(r.Properties!.PolicyDocument));
  return [...managed, ...inline];
}

const stacks: [string, Resources, (resources: Resources, fn: string) => Statement[]][] = [
  ["SAM", samTemplate().Resources, samStatements],
  ["CDK", cdkTemplate().toJSON().Resources, cdkStatements],
];

test("the inventory names every function and something for each", () => {
  assert.deepEqual(Object.keys(inventory.functions).sort(), ["ApiFunction", "InterruptionFunction", "ReconcilerFunction", "StateChangeFunction"]);
  for (const [fn, actions] of Object.entries(inventory.functions)) {
    assert.ok(actions.includes("ec2:RunInstances") && actions.includes("dynamodb:PutItem"), `${fn}: ${actions}`);
  }
});

for (const [stack, resources, statementsOf] of stacks) {
  for (const [fn, needed] of Object.entries(inventory.functions)) {
    test(`${stack}: ${fn} is allowed every action its code calls, and no mutating action it does not`, () => {
      const allowed = statementsOf(resources, fn);
      for (const s of allowed) {
        assert.equal(s.Effect, "Allow", `${stack} ${fn}: this test reads Allow statements only`);
      }
      const patterns = allowed.flatMap(actionsOf);
      const missing = needed.filter((action) => !patterns.some((p) => allows(p, action)));
      assert.deepEqual(missing, [], `${stack} ${fn} may not call what its code calls`);
      const unused = patterns.filter(
        (p) => ADAPTER_SERVICES.includes(p.split(":")[0]) && !READ.test(p) && !needed.some((action) => action.toLowerCase() === p.toLowerCase()),
      );
      assert.deepEqual(unused, [], `${stack} ${fn} is allowed mutating actions no adapter calls (a wildcard counts as one)`);
    });
  }
}

for (const [stack, resources, statementsOf] of stacks) {
  for (const [fn, needed] of Object.entries(inventory.functions)) {
    test(`${stack}: ${fn} may use SQS on its own queues only`, () => {
      const ownQueue = fn.replace(/Function$/, "Queue");
      const ownDeadLetterQueue = fn.replace(/Function$/, "DeadLetterQueue");
      const hasQueue = resources[ownQueue]?.Type === "AWS::SQS::Queue";
      // Queue → the SQS actions this function's statements allow on it.
      const granted: Record<string, Set<string>> = {};
      for (const s of statementsOf(resources, fn)) {
        const sqs = actionsOf(s).filter((a) => a.toLowerCase().startsWith("sqs:"));
        if (sqs.length === 0) continue;
        for (const resource of resourcesOf(s)) {
          const queue = logicalId(resource);
          assert.ok(queue && resources[queue]?.Type === "AWS::SQS::Queue", `${stack} ${fn}: ${sqs} on ${JSON.stringify(resource)}, no queue of the stack`);
          sqs.forEach((a) => (granted[queue] ??= new Set()).add(a));
        }
      }
      const others = Object.keys(granted).filter((q) => q !== ownQueue && q !== ownDeadLetterQueue);
      assert.deepEqual(others, [], `${stack} ${fn} may use other functions' queues`);
      // Lambda's asynchronous dead-letter queue (SAM adds that grant in its transform).
      const hasDeadLetterQueue = resources[ownDeadLetterQueue]?.Type === "AWS::SQS::Queue";
      assert.deepEqual([...(granted[ownDeadLetterQueue] ?? [])], stack === "CDK" && hasDeadLetterQueue ? ["sqs:SendMessage"] : []);

      const neededSqs = needed.filter((a) => a.startsWith("sqs:"));
      const onQueue = granted[ownQueue] ?? new Set<string>();
      assert.ok(hasQueue || neededSqs.length === 0, `${stack} ${fn} calls ${neededSqs} but has no queue`);
      assert.deepEqual(neededSqs.filter((a) => !onQueue.has(a)), [], `${stack} ${fn} may not call on its queue what its code calls`);
      if (hasQueue && stack === "CDK") {
        assert.deepEqual(MAPPING_ACTIONS.filter((a) => !onQueue.has(a)), [], `${stack} ${fn}: its event source mapping may not receive`);
      }
      if (hasQueue && stack === "SAM") {
        // SAM's transform gives the role AWS's AWSLambdaSQSQueueExecutionRole for an SQS event.
        const events = Object.values((resources[fn].Properties!.Events ?? {}) as Record<string, any>);
        assert.ok(events.some((e) => e.Type === "SQS" && logicalId(e.Properties.Queue) === ownQueue), `${stack} ${fn}: no SQS event on ${ownQueue}`);
      }
      const beyond = [...onQueue].filter((a) => !neededSqs.includes(a) && !MAPPING_ACTIONS.includes(a) && !MAPPING_GRANT_EXTRAS.includes(a));
      assert.deepEqual(beyond, [], `${stack} ${fn} is allowed SQS actions on its queue that neither its code nor its mapping needs`);
    });
  }
}
