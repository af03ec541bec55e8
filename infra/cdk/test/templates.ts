// The two templates the tests compare: the SAM template as JSON (written by infra/sam-to-json.py,
// which `make infra-check` runs first) and the CDK app synthesized on stub code assets (no
// release build needed).

import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { App } from "aws-cdk-lib";
import { Template } from "aws-cdk-lib/assertions";
import { TetherStack } from "../lib/tether-stack";

export const BINARIES = ["tether-interruption", "tether-state-change", "tether-reconciler", "tether-api"];

/** A folder with an empty `bootstrap` per function, for the app's code assets. */
export function stubAssets(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tether-assets-"));
  for (const binary of BINARIES) {
    fs.mkdirSync(path.join(dir, binary));
    fs.writeFileSync(path.join(dir, binary, "bootstrap"), "#!/bin/sh\n");
  }
  return dir;
}

export function cdkTemplate(): Template {
  return Template.fromStack(new TetherStack(new App(), "Tether", { assets: stubAssets() }));
}

export function samTemplate(): any {
  const samPath = path.resolve(__dirname, "../../sam-template.json");
  if (!fs.existsSync(samPath)) {
    throw new Error(`${samPath} is missing: run \`make infra-check\` (it converts infra/template.yaml first)`);
  }
  return JSON.parse(fs.readFileSync(samPath, "utf8"));
}

/** Resolves `Ref` to a parameter (its value in `parameters`, else its default) and
 * `Fn::FindInMap` in `template`: what CloudFormation would deploy with those parameters. */
export function resolve(template: any, value: any, parameters: Record<string, string> = {}): any {
  if (Array.isArray(value)) return value.map((v) => resolve(template, v, parameters));
  if (value && typeof value === "object") {
    if ("Ref" in value && template.Parameters?.[value.Ref]) {
      return parameters[value.Ref] ?? String(template.Parameters[value.Ref].Default);
    }
    if ("Fn::FindInMap" in value) {
      const [map, first, second] = resolve(template, value["Fn::FindInMap"], parameters);
      const found = template.Mappings?.[map]?.[first]?.[second];
      if (found === undefined) throw new Error(`no ${map}.${first}.${second} in the mappings`);
      return found;
    }
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, resolve(template, v, parameters)]));
  }
  return value;
}

/** One stack's functions as both templates describe them, in CloudFormation's terms. */
export interface StackView {
  readonly name: "SAM" | "CDK";
  readonly template: any;
  /** The function's timeout in seconds (SAM: with its Globals). */
  timeout(fn: string): number;
  /** The function's ReservedConcurrentExecutions, unresolved (undefined: none). */
  reservedConcurrency(fn: string): any;
  /** The function's SQS event source mapping (AWS::Lambda::EventSourceMapping's properties
   * but FunctionName), unresolved; undefined: none. */
  queueMapping(fn: string): Record<string, any> | undefined;
}

export function samView(template: any = samTemplate()): StackView {
  const props = (fn: string) => ({ ...template.Globals.Function, ...template.Resources[fn].Properties });
  return {
    name: "SAM",
    template,
    timeout: (fn) => props(fn).Timeout,
    reservedConcurrency: (fn) => props(fn).ReservedConcurrentExecutions,
    queueMapping: (fn) => {
      const events = Object.values((props(fn).Events ?? {}) as Record<string, any>).filter((e) => e.Type === "SQS");
      if (events.length > 1) throw new Error(`${fn} has ${events.length} SQS events`);
      if (events.length === 0) return undefined;
      const { Queue, ...rest } = events[0].Properties;
      return { EventSourceArn: Queue, ...rest };
    },
  };
}

export function cdkView(template: any = cdkTemplate().toJSON()): StackView {
  const resources: Record<string, any> = template.Resources;
  return {
    name: "CDK",
    template,
    timeout: (fn) => resources[fn].Properties.Timeout,
    reservedConcurrency: (fn) => resources[fn].Properties.ReservedConcurrentExecutions,
    queueMapping: (fn) => {
      const mappings = Object.values(resources).filter((r) => r.Type === "AWS::Lambda::EventSourceMapping" && r.Properties.FunctionName.Ref === fn);
      if (mappings.length > 1) throw new Error(`${fn} has ${mappings.length} event source mappings`);
      if (mappings.length === 0) return undefined;
      const { FunctionName: _, ...rest } = mappings[0].Properties;
      return rest;
    },
  };
}

/** The logical id a `{"Fn::GetAtt": [id, "Arn"]}` or `{"Ref": id}` names. */
export function logicalId(value: any): string | undefined {
  return value?.["Fn::GetAtt"]?.[0] ?? value?.Ref;
}
