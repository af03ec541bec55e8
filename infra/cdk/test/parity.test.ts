// The SAM template and the CDK app must deploy the same stack: the same functions (binary,
// limits, policies, dead-letter queue, retries), EventBridge rules and their permissions,
// table, queues, alarms, IAM policies, API routes with IAM auth, parameters and outputs.
// Anything added to only one of them fails here. `make infra-check` writes
// sam-template.json (infra/sam-to-json.py) before running these tests.

import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "fs";
import * as path from "path";
import { API_ROUTES } from "../lib/policies";
import { cdkTemplate, samTemplate } from "./templates";

type Resources = Record<string, { Type: string; Properties?: Record<string, any>; Metadata?: Record<string, any>; DeletionPolicy?: string }>;

const sam = samTemplate();
const samResources: Resources = sam.Resources;
const cdk = cdkTemplate().toJSON();
const cdkResources: Resources = cdk.Resources;

/** Logical id → properties (and deletion policy) of the resources of `type`. */
function ofType(resources: Resources, type: string, keep: (r: Resources[string]) => boolean = () => true) {
  return Object.fromEntries(
    Object.entries(resources)
      .filter(([, r]) => r.Type === type && keep(r))
      .map(([id, r]) => [id, { properties: r.Properties, deletion: r.DeletionPolicy ?? "Delete" }]),
  );
}

for (const type of ["AWS::Events::Rule", "AWS::SQS::Queue", "AWS::SQS::QueuePolicy", "AWS::CloudWatch::Alarm", "AWS::IAM::ManagedPolicy", "AWS::DynamoDB::Table"]) {
  test(`the same ${type} resources`, () => {
    assert.deepEqual(ofType(cdkResources, type), ofType(samResources, type));
  });
}

test("the same EventBridge invoke permissions", () => {
  const fromEvents = (r: Resources[string]) => r.Properties?.Principal === "events.amazonaws.com";
  assert.deepEqual(ofType(cdkResources, "AWS::Lambda::Permission", fromEvents), ofType(samResources, "AWS::Lambda::Permission", fromEvents));
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
          },
        ];
      }),
  );
}

test("the same functions: binary, runtime, limits, environment, policies, dead-letter queue, retries", () => {
  assert.deepEqual(cdkFunctions(), samFunctions());
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

test("the same parameters, conditions and outputs", () => {
  const params = (t: any) => Object.fromEntries(Object.entries(t.Parameters).filter(([id]) => !id.startsWith("BootstrapVersion")));
  assert.deepEqual(params(cdk), params(sam));
  assert.deepEqual(cdk.Conditions, sam.Conditions);
  assert.deepEqual(Object.keys(cdk.Outputs).sort(), Object.keys(sam.Outputs).sort());
});
