// Tether's stack in CDK: the same resources as infra/template.yaml (SAM), with the same
// logical ids, so that test/parity.test.ts can compare the two resource by resource.
// The functions' code comes prebuilt (cargo lambda build): `<assets>/<binary>/bootstrap`.

import * as path from "path";
import { CfnCondition, CfnOutput, CfnParameter, CfnResource, Duration, Fn, RemovalPolicy, Stack, StackProps } from "aws-cdk-lib";
import { HttpApi, HttpMethod } from "aws-cdk-lib/aws-apigatewayv2";
import { HttpIamAuthorizer } from "aws-cdk-lib/aws-apigatewayv2-authorizers";
import { HttpLambdaIntegration } from "aws-cdk-lib/aws-apigatewayv2-integrations";
import { CfnAlarm } from "aws-cdk-lib/aws-cloudwatch";
import { CfnTable } from "aws-cdk-lib/aws-dynamodb";
import { CfnRule } from "aws-cdk-lib/aws-events";
import { CfnManagedPolicy, ManagedPolicy } from "aws-cdk-lib/aws-iam";
import { Architecture, CfnPermission, Code, Function as LambdaFunction, Runtime } from "aws-cdk-lib/aws-lambda";
import { CfnQueue, CfnQueuePolicy, Queue } from "aws-cdk-lib/aws-sqs";
import { Construct } from "constructs";

import { API_ROUTES, ec2PolicyStatements, IMPORT_POLICY_STATEMENTS, tablePolicyStatements } from "./policies";

export interface TetherStackProps extends StackProps {
  /** Where the functions' prebuilt code is: `<assets>/<binary>/bootstrap`. */
  readonly assets: string;
}

/** One event-driven function: its binary, its trigger, its limits. */
interface EventFunction {
  readonly name: string;
  readonly binary: string;
  readonly description: string;
  readonly timeout: number;
  readonly retries: number;
  readonly rule: string;
  readonly ruleDescription: string;
  readonly deadLetterAlarm: string;
  readonly errorsAlarm: string;
  readonly pattern?: object;
  readonly schedule?: string;
}

const EVENT_FUNCTIONS: EventFunction[] = [
  {
    name: "Interruption",
    binary: "tether-interruption",
    description: "Spot interruption warning and rebalance recommendation.",
    timeout: 30,
    retries: 2,
    rule: "InterruptionRule",
    ruleDescription: "Spot interruption warnings and rebalance recommendations to Tether.",
    deadLetterAlarm: "Interruption events Tether could not process (see the queue).",
    errorsAlarm: "The interruption function failed (Lambda retries; see its logs).",
    pattern: { source: ["aws.ec2"], "detail-type": ["EC2 Spot Instance Interruption Warning", "EC2 Instance Rebalance Recommendation"] },
  },
  {
    name: "StateChange",
    binary: "tether-state-change",
    description: "Instance state changes; launches replacements on the node's ENI.",
    // Shorter than Lambda's first retry: a crashed invocation's event claim has lapsed by then.
    timeout: 60,
    retries: 2,
    rule: "StateChangeRule",
    ruleDescription: "EC2 instance state changes to Tether.",
    deadLetterAlarm: "State-change events Tether could not process (see the queue).",
    errorsAlarm: "The state-change function failed (Lambda retries; see its logs).",
    pattern: { source: ["aws.ec2"], "detail-type": ["EC2 Instance State-change Notification"] },
  },
  {
    name: "Reconciler",
    binary: "tether-reconciler",
    description: "Every minute; catches what events missed.",
    timeout: 55,
    retries: 0,
    rule: "ReconcilerSchedule",
    ruleDescription: "Runs Tether's reconciler every minute.",
    deadLetterAlarm: "Reconciler runs that never started or failed (see the queue).",
    errorsAlarm: "The reconciler failed (the next run retries; see its logs).",
    schedule: "rate(1 minute)",
  },
];

export class TetherStack extends Stack {
  constructor(scope: Construct, id: string, props: TetherStackProps) {
    super(scope, id, props);

    const architecture = new CfnParameter(this, "Architecture", {
      type: "String",
      default: "arm64",
      allowedValues: ["arm64", "x86_64"],
      description: "CPU architecture of the functions (build with the matching cargo-lambda target).",
    });
    new CfnParameter(this, "InstanceRoleArn", {
      type: "String",
      default: "",
      allowedPattern: "^$|^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$",
      description:
        "The IAM role of the instance profile nodes launch with (their spec's iam_instance_profile). Tether may pass only this role; empty: nodes launch without one.",
    });
    const logLevel = new CfnParameter(this, "LogLevel", {
      type: "String",
      default: "info",
      allowedValues: ["error", "warn", "info", "debug", "trace"],
      description: "RUST_LOG of every function.",
    });
    new CfnCondition(this, "HasInstanceRole", { expression: Fn.conditionNot(Fn.conditionEquals(Fn.ref("InstanceRoleArn"), "")) });

    // Retained when the stack is deleted: it names every node's ENI.
    const table = new CfnTable(this, "NodesTable", {
      billingMode: "PAY_PER_REQUEST",
      attributeDefinitions: [
        { attributeName: "pk", attributeType: "S" },
        { attributeName: "instance_id", attributeType: "S" },
        { attributeName: "group_id", attributeType: "S" },
      ],
      keySchema: [{ attributeName: "pk", keyType: "HASH" }],
      globalSecondaryIndexes: [
        { indexName: "by-instance", keySchema: [{ attributeName: "instance_id", keyType: "HASH" }], projection: { projectionType: "ALL" } },
        // A stateful group's members (the group controller reads them each run).
        { indexName: "by-group", keySchema: [{ attributeName: "group_id", keyType: "HASH" }], projection: { projectionType: "ALL" } },
      ],
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
      timeToLiveSpecification: { attributeName: "expires_at", enabled: true },
    });
    table.applyRemovalPolicy(RemovalPolicy.RETAIN);

    const ec2Policy = new CfnManagedPolicy(this, "TetherEc2Policy", {
      description: "Tether's EC2 actions, scoped to resources tagged tether:managed.",
      policyDocument: { Version: "2012-10-17", Statement: ec2PolicyStatements() },
    });
    const importPolicy = new CfnManagedPolicy(this, "TetherImportPolicy", {
      description: "Tether's import, tagging an existing instance and ENI with Tether's keys only.",
      policyDocument: { Version: "2012-10-17", Statement: IMPORT_POLICY_STATEMENTS },
    });
    const tablePolicy = new CfnManagedPolicy(this, "TetherTablePolicy", {
      description: "Tether's items in its own table.",
      policyDocument: { Version: "2012-10-17", Statement: tablePolicyStatements(table.attrArn) },
    });

    const makeFunction = (name: string, binary: string, description: string, timeout: number, policies: CfnManagedPolicy[], deadLetterQueue?: CfnQueue, retries?: number) => {
      const fn = new LambdaFunction(this, `${name}Function`, {
        description,
        runtime: Runtime.PROVIDED_AL2023,
        handler: "bootstrap",
        architecture: Architecture.custom(architecture.valueAsString),
        memorySize: 128,
        timeout: Duration.seconds(timeout),
        code: Code.fromAsset(path.join(props.assets, binary)),
        environment: { TETHER_TABLE_NAME: table.ref, RUST_LOG: logLevel.valueAsString },
        deadLetterQueue: deadLetterQueue ? Queue.fromQueueArn(this, `${name}DeadLetterQueueRef`, deadLetterQueue.attrArn) : undefined,
        retryAttempts: retries,
      });
      const resource = fn.node.defaultChild as CfnResource;
      resource.overrideLogicalId(`${name}Function`);
      // Which cargo-lambda binary it runs, as SAM's BuildProperties say (read by the parity test).
      resource.addMetadata("tether:binary", binary);
      policies.forEach((policy, i) => fn.role?.addManagedPolicy(ManagedPolicy.fromManagedPolicyArn(this, `${name}Policy${i}`, policy.ref)));
      return fn;
    };

    const queues: CfnQueue[] = [];
    const rules: CfnRule[] = [];
    const functions: LambdaFunction[] = [];
    for (const spec of EVENT_FUNCTIONS) {
      const queue = new CfnQueue(this, `${spec.name}DeadLetterQueue`, { messageRetentionPeriod: 1209600, sqsManagedSseEnabled: true });
      const fn = makeFunction(spec.name, spec.binary, spec.description, spec.timeout, [ec2Policy, tablePolicy], queue, spec.retries);
      const rule = new CfnRule(this, spec.rule, {
        description: spec.ruleDescription,
        eventPattern: spec.pattern,
        scheduleExpression: spec.schedule,
        targets: [{ id: spec.binary.replace("tether-", ""), arn: fn.functionArn, deadLetterConfig: { arn: queue.attrArn } }],
      });
      new CfnPermission(this, `${spec.name}Permission`, {
        action: "lambda:InvokeFunction",
        functionName: fn.functionName,
        principal: "events.amazonaws.com",
        sourceArn: rule.attrArn,
      });
      this.alarm(`${spec.name}DeadLetterAlarm`, spec.deadLetterAlarm, "AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", queue.attrQueueName, "Maximum", 60);
      this.alarm(`${spec.name}ErrorsAlarm`, spec.errorsAlarm, "AWS/Lambda", "Errors", "FunctionName", fn.functionName, "Sum", 300);
      queues.push(queue);
      rules.push(rule);
      functions.push(fn);
    }

    // EventBridge may put events it could not deliver into the queues.
    new CfnQueuePolicy(this, "DeadLetterQueuePolicy", {
      queues: queues.map((q) => q.ref),
      policyDocument: {
        Version: "2012-10-17",
        Statement: [
          {
            Sid: "EventBridgeDeliveryFailures",
            Effect: "Allow",
            Principal: { Service: "events.amazonaws.com" },
            Action: "sqs:SendMessage",
            Resource: queues.map((q) => q.attrArn),
            Condition: { ArnEquals: { "aws:SourceArn": rules.map((r) => r.attrArn) } },
          },
        ],
      },
    });

    // The management API: HTTP API with IAM auth on every route.
    const apiFunction = makeFunction("Api", "tether-api", "Tether's management API.", 29, [ec2Policy, importPolicy, tablePolicy]);
    const api = new HttpApi(this, "Api", { defaultAuthorizer: new HttpIamAuthorizer(), createDefaultStage: true });
    const integration = new HttpLambdaIntegration("ApiIntegration", apiFunction);
    for (const [method, route] of API_ROUTES) {
      api.addRoutes({ path: route, methods: [method as HttpMethod], integration });
    }
    this.alarm("ApiErrorsAlarm", "The API function failed (callers saw 5xx; see its logs).", "AWS/Lambda", "Errors", "FunctionName", apiFunction.functionName, "Sum", 300);
    // Tether's own metric (embedded-metric-format lines in the functions' logs): a node went
    // into ERROR, or an event could never be processed. Neither fails an invocation.
    this.alarm("NodeErrorsAlarm", "A node went into ERROR or an event could not be processed (see the functions' logs; an operator decides).", "Tether", "Errors", "Deployment", table.ref, "Sum", 300);

    new CfnOutput(this, "ApiUrl", { description: "The management API's endpoint (TETHER_API_URL for the tether CLI).", value: api.apiEndpoint });
    new CfnOutput(this, "NodesTableName", { description: "The DynamoDB table (retained when the stack is deleted).", value: table.ref });
  }

  private alarm(id: string, description: string, namespace: string, metricName: string, dimension: string, value: string, statistic: string, period: number) {
    new CfnAlarm(this, id, {
      alarmDescription: description,
      namespace,
      metricName,
      dimensions: [{ name: dimension, value }],
      statistic,
      period,
      evaluationPeriods: 1,
      threshold: 0,
      comparisonOperator: "GreaterThanThreshold",
      treatMissingData: "notBreaching",
    });
  }
}
