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
