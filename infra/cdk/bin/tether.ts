// The CDK app: `npm run synth` (or `npx cdk deploy`) after `make build` has put the functions'
// code in target/lambda/<binary>/bootstrap. TETHER_LAMBDA_ASSETS points elsewhere.

import * as path from "path";
import { App } from "aws-cdk-lib";
import { TetherStack } from "../lib/tether-stack";

const app = new App();
const assets = process.env.TETHER_LAMBDA_ASSETS ?? path.resolve(__dirname, "../../../../target/lambda");
new TetherStack(app, "Tether", { assets, description: "Tether: keeps EC2 spot nodes' ENI, private IP and Elastic IP across interruptions." });
app.synth();
