// The SAM template and the CDK app must deploy the same stack: the same functions (binary,
// limits, policies, dead-letter queue, retries, reserved concurrency, SQS event source
// mapping), EventBridge rules and their targets, the reconciler's invoke permission, table
// (keys, indexes), queues and their policies, alarms, IAM policies, API routes with IAM auth,
// parameters, mappings and outputs; and for those resources their DependsOn (the rules wait
// for their queues' policies).
// Anything added to only one of them fails here. `make infra-check` writes
// sam-template.json (infra/sam-to-json.py) before running these tests.

import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "fs";
import * as path from "path";
import { API_ROUTES } from "../lib/policies";
import { cdkTemplate, cdkView, resolve, samTemplate, samView } from "./templates";

type Resources = Record<
  string,
  { Type: string; Properties?: Record<string, any>; Metadata?: Record<string, any>; DeletionPolicy?: string; DependsOn?: string | string[] }
>;

const sam = samTemplate();
const samResources: Resources = sam.Resources;
const cdk = cdkTemplate().toJSON();
const cdkResources: Resources = cdk.Resources;
const samStack = samView(sam);
const cdkStack = cdkView(cdk);

/** Logical id → properties, deletion policy and DependsOn (sorted) of the resources of `type`. */
function ofType(resources: Resources, type: string, keep: (r: Resources[string]) => boolean = () => true) {
  return Object.fromEntries(
    Object.entries(resources)
      .filter(([, r]) => r.Type === type && keep(r))
      .map(([id, r]) => [id, { properties: r.Properties, deletion: r.DeletionPolicy ?? "Delete", dependsOn: ([] as string[]).concat(r.DependsOn ?? []).sort() }]),
  );
}

for (const type of ["AWS::Events::Rule", "AWS::SQS::Queue", "AWS::SQS::QueuePolicy", "AWS::CloudWatch::Alarm", "AWS::IAM::ManagedPolicy", "AWS::DynamoDB::Table"]) {
  test(`the same ${type} resources`, () => {
    assert.deepEqual(ofType(cdkResources, type), ofType(samResources, type));
  });
}

test("the same EventBridge invoke permissions: the reconciler's only (the event rules target queues)", () => {
  const fromEvents = (r: Resources[string]) => r.Properties?.Principal === "events.amazonaws.com";
  const samPermissions = ofType(samResources, "AWS::Lambda::Permission", fromEvents);
  assert.deepEqual(ofType(cdkResources, "AWS::Lambda::Permission", fromEvents), samPermissions);
  assert.deepEqual(Object.keys(samPermissions), ["ReconcilerPermission"]);
});

/** A function as both templates describe it, in SAM's terms. */
function samFunctions() {
  const globals = sam.Globals.Function;
  return Object.fromEntries(
    Object.entries(samResources)
      .filter(([, r]) => r.Type === "AWS::Serverless::Function")
      .map(([id, r]) => {
        const p = { ...globals, ...r.Properties! };
        return [
          id,
          {
            binary: r.Metadata!.BuildProperties.Binary,
            runtime: p.Runtime,
            handler: p.Handler,
            architectures: p.Architectures,
            memory: p.MemorySize,
            timeout: p.Timeout,
            environment: p.Environment.Variables,
            policies: p.Policies,
            deadLetterQueue: p.DeadLetterQueue?.TargetArn ?? null,
            retries: p.EventInvokeConfig?.MaximumRetryAttempts ?? null,
            reservedConcurrency: samStack.reservedConcurrency(id) ?? null,
            queueMapping: samStack.queueMapping(id) ?? null,
          },
        ];
      }),
  );
}

function cdkFunctions() {
  return Object.fromEntries(
    Object.entries(cdkResources)
      .filter(([, r]) => r.Type === "AWS::Lambda::Function")
      .map(([id, r]) => {
        const p = r.Properties!;
        const role = cdkResources[p.Role["Fn::GetAtt"][0]].Properties!;
        const invokeConfig = Object.values(cdkResources).find((c) => c.Type === "AWS::Lambda::EventInvokeConfig" && c.Properties!.FunctionName.Ref === id);
        return [
          id,
          {
            binary: r.Metadata!["tether:binary"],
            runtime: p.Runtime,
            handler: p.Handler,
            architectures: p.Architectures,
            memory: p.MemorySize,
            timeout: p.Timeout,
            environment: p.Environment.Variables,
            // Tether's own policies, as SAM lists them (the basic execution role is implied there).
            policies: role.ManagedPolicyArns.filter((arn: any) => arn.Ref),
            deadLetterQueue: p.DeadLetterConfig?.TargetArn ?? null,
            retries: invokeConfig?.Properties!.MaximumRetryAttempts ?? null,
            reservedConcurrency: cdkStack.reservedConcurrency(id) ?? null,
            queueMapping: cdkStack.queueMapping(id) ?? null,
          },
        ];
      }),
  );
}

test("the same functions: binary, runtime, limits, environment, policies, dead-letter queue, retries, reserved concurrency, SQS event source mapping", () => {
  assert.deepEqual(cdkFunctions(), samFunctions());
});

test("the same settings deployed at the default concurrency share: queues, mappings, reserved concurrency, timeouts, rule targets", () => {
  // What CloudFormation deploys with the default parameters (FindInMap and Ref resolved).
  const deployed = (template: any, functions: Record<string, any>) => ({
    functions: resolve(template, functions),
    queues: resolve(template, ofType(template.Resources, "AWS::SQS::Queue")),
    targets: resolve(template, Object.fromEntries(Object.entries(ofType(template.Resources, "AWS::Events::Rule")).map(([id, r]) => [id, r.properties!.Targets]))),
  });
  const cdkDeployed = deployed(cdk, cdkFunctions());
  assert.deepEqual(cdkDeployed, deployed(sam, samFunctions()));
  // The figures themselves, at the default share (10).
  assert.equal(cdkDeployed.functions.StateChangeFunction.queueMapping.ScalingConfig.MaximumConcurrency, 7);
  assert.equal(cdkDeployed.functions.InterruptionFunction.queueMapping.ScalingConfig.MaximumConcurrency, 2);
  assert.equal(cdkDeployed.functions.ReconcilerFunction.reservedConcurrency, 1);
  assert.equal(cdkDeployed.functions.ApiFunction.reservedConcurrency, null);
  assert.deepEqual(
    Object.fromEntries(Object.entries(cdkDeployed.functions).map(([id, f]: [string, any]) => [id, f.timeout])),
    { InterruptionFunction: 30, StateChangeFunction: 90, ReconcilerFunction: 55, ApiFunction: 29 },
  );
  assert.deepEqual(cdkDeployed.queues.StateChangeQueue.properties.VisibilityTimeout, 540);
  assert.deepEqual(cdkDeployed.queues.InterruptionQueue.properties.VisibilityTimeout, 180);
  // The two event rules target their queues, the schedule its function.
  assert.deepEqual(
    Object.fromEntries(Object.entries(cdkDeployed.targets).map(([id, targets]: [string, any]) => [id, targets.map((t: any) => t.Arn["Fn::GetAtt"][0])])),
    { InterruptionRule: ["InterruptionQueue"], StateChangeRule: ["StateChangeQueue"], ReconcilerSchedule: ["ReconcilerFunction"] },
  );
});

test("the same API routes, every one with IAM auth", () => {
  const samApi = Object.values(samResources).find((r) => r.Type === "AWS::Serverless::HttpApi")!;
  assert.equal(samApi.Properties!.Auth.DefaultAuthorizer, "AWS_IAM");
  const samRoutes = Object.values(samResources.ApiFunction.Properties!.Events)
    .map((e: any) => `${e.Properties.Method} ${e.Properties.Path}`)
    .sort();
  const cdkRoutes = Object.values(cdkResources).filter((r) => r.Type === "AWS::ApiGatewayV2::Route");
  assert.ok(cdkRoutes.every((r) => r.Properties!.AuthorizationType === "AWS_IAM"));
  assert.deepEqual(cdkRoutes.map((r) => r.Properties!.RouteKey).sort(), samRoutes);
});

test("the stacks route exactly the API's documented routes (functions/api/openapi.json)", () => {
  const openapi = JSON.parse(fs.readFileSync(path.resolve(__dirname, "../../../../functions/api/openapi.json"), "utf8"));
  const documented = Object.entries(openapi.paths as Record<string, object>)
    .flatMap(([route, methods]) => Object.keys(methods).map((m) => `${m.toUpperCase()} ${route}`))
    .sort();
  assert.deepEqual(API_ROUTES.map(([method, route]) => `${method} ${route}`).sort(), documented);
});

test("the same parameters, mappings, conditions and outputs", () => {
  const params = (t: any) => Object.fromEntries(Object.entries(t.Parameters).filter(([id]) => !id.startsWith("BootstrapVersion")));
  assert.deepEqual(params(cdk), params(sam));
  assert.deepEqual(cdk.Mappings, sam.Mappings);
  assert.deepEqual(cdk.Conditions, sam.Conditions);
  assert.deepEqual(Object.keys(cdk.Outputs).sort(), Object.keys(sam.Outputs).sort());
  // Every output the same but the API's URL (SAM's implicit stage and CDK's endpoint attribute).
  const outputs = (t: any) => Object.fromEntries(Object.entries(t.Outputs).filter(([id]) => id !== "ApiUrl"));
  assert.deepEqual(outputs(cdk), outputs(sam));
});
