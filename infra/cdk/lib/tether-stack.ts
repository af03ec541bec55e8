// Tether's stack in CDK: the same resources as infra/template.yaml (SAM), with the same
// logical ids, so that test/parity.test.ts can compare the two resource by resource.
// The functions' code comes prebuilt (cargo lambda build): `<assets>/<binary>/bootstrap`.

import * as path from "path";
import { CfnCondition, CfnMapping, CfnOutput, CfnParameter, CfnResource, Duration, Fn, RemovalPolicy, Stack, StackProps, Token } from "aws-cdk-lib";
import { HttpApi, HttpMethod } from "aws-cdk-lib/aws-apigatewayv2";
import { HttpIamAuthorizer } from "aws-cdk-lib/aws-apigatewayv2-authorizers";
import { HttpLambdaIntegration } from "aws-cdk-lib/aws-apigatewayv2-integrations";
import { CfnAlarm } from "aws-cdk-lib/aws-cloudwatch";
import { CfnTable } from "aws-cdk-lib/aws-dynamodb";
import { CfnRule } from "aws-cdk-lib/aws-events";
import { CfnManagedPolicy, ManagedPolicy } from "aws-cdk-lib/aws-iam";
import { Architecture, CfnEventSourceMapping, CfnPermission, Code, Function as LambdaFunction, Runtime } from "aws-cdk-lib/aws-lambda";
import { SqsEventSource } from "aws-cdk-lib/aws-lambda-event-sources";
import { CfnQueue, CfnQueuePolicy, Queue } from "aws-cdk-lib/aws-sqs";
import { Construct } from "constructs";

import { API_ROUTES, ec2PolicyStatements, IMPORT_POLICY_STATEMENTS, tablePolicyStatements } from "./policies";

export interface TetherStackProps extends StackProps {
  /** Where the functions' prebuilt code is: `<assets>/<binary>/bootstrap`. */
  readonly assets: string;
}

/** What a concurrency share gives: the state-change and interruption event source mappings'
 * MaximumConcurrency (AWS: 2 to 1000) and the reconciler's reserved concurrency. */
export interface ConcurrencySplit {
  readonly StateChange: number;
  readonly Interruption: number;
  readonly Reconciler: number;
}

/** The ConcurrencyShares mapping: each split adds up to its share (CloudFormation has no
 * arithmetic). Most goes to state changes: they launch the replacements. */
export const CONCURRENCY_SHARES: Record<string, ConcurrencySplit> = {
  "5": { StateChange: 2, Interruption: 2, Reconciler: 1 },
  "10": { StateChange: 7, Interruption: 2, Reconciler: 1 },
  "20": { StateChange: 15, Interruption: 4, Reconciler: 1 },
  "50": { StateChange: 39, Interruption: 10, Reconciler: 1 },
  "100": { StateChange: 79, Interruption: 20, Reconciler: 1 },
  "200": { StateChange: 159, Interruption: 40, Reconciler: 1 },
};

/** One event-driven function: its binary, its trigger, its limits. */
interface EventFunction {
  readonly name: keyof ConcurrencySplit;
  readonly binary: string;
  readonly description: string;
  readonly timeout: number;
  readonly retries: number;
  readonly rule: string;
  readonly ruleDescription: string;
  readonly deadLetterAlarm: string;
  readonly errorsAlarm: string;
  /** An EventBridge pattern, delivered through the function's SQS queue. */
  readonly pattern?: object;
  /** A schedule, invoking the function directly (asynchronously). */
  readonly schedule?: string;
}

const EVENT_FUNCTIONS: EventFunction[] = [
  {
    name: "Interruption",
    binary: "tether-interruption",
    description: "Spot interruption warning, rebalance recommendation, AWS Health scheduled changes.",
    timeout: 30,
    retries: 2,
    rule: "InterruptionRule",
    ruleDescription: "Spot interruption warnings, rebalance recommendations and AWS Health's scheduled changes to EC2 instances, to Tether.",
    deadLetterAlarm: "Interruption events Tether could not process (see the queue).",
    errorsAlarm: "The interruption function failed (Lambda retries; see its logs).",
    pattern: {
      $or: [
        { source: ["aws.ec2"], "detail-type": ["EC2 Spot Instance Interruption Warning", "EC2 Instance Rebalance Recommendation"] },
        { source: ["aws.health"], "detail-type": ["AWS Health Event"], detail: { service: ["EC2"], eventTypeCategory: ["scheduledChange"] } },
      ],
    },
  },
  {
    name: "StateChange",
    binary: "tether-state-change",
    description: "Instance state changes; launches replacements on the node's ENI.",
    // A batch of up to 10 events whose launches share the RunInstances pace.
    timeout: 90,
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

/** What the queues' descriptions and outputs call each queued function. */
const QUEUED_LABEL: Record<string, string> = { Interruption: "interruption", StateChange: "state-change" };

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
    const concurrencyShare = new CfnParameter(this, "ConcurrencyShare", {
      type: "Number",
      default: "10",
      allowedValues: Object.keys(CONCURRENCY_SHARES),
      description:
        "The most concurrent executions Tether's event functions and reconciler may use together (the API is not counted): split by the ConcurrencyShares mapping between the two queues' event source mappings (MaximumConcurrency) and the reconciler (reserved concurrency).",
    });
    const shares = new CfnMapping(this, "ConcurrencyShares", { mapping: CONCURRENCY_SHARES });
    const concurrency = (name: keyof ConcurrencySplit) => Token.asNumber(shares.findInMap(concurrencyShare.valueAsString, name));
    new CfnCondition(this, "HasInstanceRole", { expression: Fn.conditionNot(Fn.conditionEquals(Fn.ref("InstanceRoleArn"), "")) });

    // Retained when the stack is deleted: it names every node's ENI. An index added later:
    // CloudFormation starts its creation and goes on without waiting for its backfill; it
    // cannot be queried until it is ACTIVE. One index added or removed per stack update.
    const table = new CfnTable(this, "NodesTable", {
      billingMode: "PAY_PER_REQUEST",
      attributeDefinitions: [
        { attributeName: "pk", attributeType: "S" },
        { attributeName: "instance_id", attributeType: "S" },
        { attributeName: "group_id", attributeType: "S" },
        { attributeName: "kind", attributeType: "S" },
      ],
      keySchema: [{ attributeName: "pk", keyType: "HASH" }],
      globalSecondaryIndexes: [
        { indexName: "by-instance", keySchema: [{ attributeName: "instance_id", keyType: "HASH" }], projection: { projectionType: "ALL" } },
        // A stateful group's members (the group controller reads them each run).
        { indexName: "by-group", keySchema: [{ attributeName: "group_id", keyType: "HASH" }], projection: { projectionType: "ALL" } },
        // Sparse: only node items carry `kind` ("node"), so listing nodes and the reconciler
        // read node items only, in pk order, not the whole table.
        {
          indexName: "by-kind",
          keySchema: [
            { attributeName: "kind", keyType: "HASH" },
            { attributeName: "pk", keyType: "RANGE" },
          ],
          projection: { projectionType: "ALL" },
        },
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

    const makeFunction = (
      name: string,
      binary: string,
      description: string,
      timeout: number,
      policies: CfnManagedPolicy[],
      options: { deadLetterQueue?: CfnQueue; retries?: number; reservedConcurrency?: number } = {},
    ) => {
      const fn = new LambdaFunction(this, `${name}Function`, {
        description,
        runtime: Runtime.PROVIDED_AL2023,
        handler: "bootstrap",
        architecture: Architecture.custom(architecture.valueAsString),
        memorySize: 128,
        timeout: Duration.seconds(timeout),
        code: Code.fromAsset(path.join(props.assets, binary)),
        environment: { TETHER_TABLE_NAME: table.ref, RUST_LOG: logLevel.valueAsString },
        deadLetterQueue: options.deadLetterQueue ? Queue.fromQueueArn(this, `${name}DeadLetterQueueRef`, options.deadLetterQueue.attrArn) : undefined,
        retryAttempts: options.retries,
        reservedConcurrentExecutions: options.reservedConcurrency,
      });
      const resource = fn.node.defaultChild as CfnResource;
      resource.overrideLogicalId(`${name}Function`);
      // Which cargo-lambda binary it runs, as SAM's BuildProperties say (read by the parity test).
      resource.addMetadata("tether:binary", binary);
      policies.forEach((policy, i) => fn.role?.addManagedPolicy(ManagedPolicy.fromManagedPolicyArn(this, `${name}Policy${i}`, policy.ref)));
      return fn;
    };

    // Event functions: EventBridge rules → SQS queues → Lambda (the reconciler: its schedule
    // invokes it directly). A queued function names the messages that failed
    // (ReportBatchItemFailures); those come back alone after the visibility timeout and go to
    // the dead-letter queue after 5 receives. An event that must wait is put back on its own
    // queue with a delay by the function itself. The functions still accept an EventBridge
    // event invoked directly (the stack before the queues): their asynchronous dead-letter
    // queue and retries stay for events handed to Lambda before an upgrade.
    const deadLetterQueues: CfnQueue[] = [];
    const rules: CfnRule[] = [];
    for (const spec of EVENT_FUNCTIONS) {
      // Longer retention than the queue's: a redriven message keeps its first enqueue time.
      const deadLetterQueue = new CfnQueue(this, `${spec.name}DeadLetterQueue`, { messageRetentionPeriod: 1209600, sqsManagedSseEnabled: true });
      const label = QUEUED_LABEL[spec.name];
      const queue = spec.pattern
        ? new CfnQueue(this, `${spec.name}Queue`, {
            // Six times the function's timeout (AWS's guidance for an SQS event source).
            visibilityTimeout: 6 * spec.timeout,
            messageRetentionPeriod: 345600,
            sqsManagedSseEnabled: true,
            redrivePolicy: { deadLetterTargetArn: deadLetterQueue.attrArn, maxReceiveCount: 5 },
          })
        : undefined;
      // The function puts a waiting event back on its own queue, and on no other.
      const requeuePolicy = queue
        ? new CfnManagedPolicy(this, `${spec.name}RequeuePolicy`, {
            description: `Tether's ${label} function puts a waiting event back on its own queue.`,
            policyDocument: { Version: "2012-10-17", Statement: [{ Sid: "Requeue", Effect: "Allow", Action: "sqs:SendMessage", Resource: queue.attrArn }] },
          })
        : undefined;
      const fn = makeFunction(spec.name, spec.binary, spec.description, spec.timeout, [ec2Policy, tablePolicy, ...(requeuePolicy ? [requeuePolicy] : [])], {
        deadLetterQueue,
        retries: spec.retries,
        // The reconciler: one run at a time, within the share.
        reservedConcurrency: queue ? undefined : concurrency(spec.name),
      });
      const target = spec.binary.replace("tether-", "");
      const rule = new CfnRule(this, spec.rule, {
        description: spec.ruleDescription,
        eventPattern: spec.pattern,
        scheduleExpression: spec.schedule,
        targets: [
          queue
            ? {
                id: target,
                arn: queue.attrArn,
                // EventBridge's longest retry, for throttling or an unavailable queue; a
                // refusal (permissions) is not retried and goes to the dead-letter queue at once.
                retryPolicy: { maximumRetryAttempts: 185, maximumEventAgeInSeconds: 86400 },
                deadLetterConfig: { arn: deadLetterQueue.attrArn },
              }
            : { id: target, arn: fn.functionArn, deadLetterConfig: { arn: deadLetterQueue.attrArn } },
        ],
      });
      if (queue) {
        const capitalized = `${label.charAt(0).toUpperCase()}${label.slice(1)}`;
        // The mapping: batches of 10 at once (a small recovery must not wait for a batch to
        // fill), failed messages named, at most the share's MaximumConcurrency. It grants
        // the role ReceiveMessage, DeleteMessage, GetQueueAttributes (and more) on this queue.
        fn.addEventSource(
          new SqsEventSource(Queue.fromQueueArn(this, `${spec.name}QueueRef`, queue.attrArn), {
            batchSize: 10,
            maxBatchingWindow: Duration.seconds(0),
            reportBatchItemFailures: true,
            maxConcurrency: concurrency(spec.name),
          }),
        );
        // SAM's logical id for the function's event `Queue`.
        (fn.node.findAll().find((c) => c instanceof CfnEventSourceMapping) as CfnEventSourceMapping).overrideLogicalId(`${spec.name}FunctionQueue`);
        // EventBridge may put events on the queue from this account's rules only. Not from its
        // own rule by ARN: CloudFormation would then create the policy only after the rule,
        // i.e. after the rule's target has switched to the queue in an upgrade, and
        // EventBridge sends a refused event straight to the dead-letter queue. The rule
        // instead waits for this policy (DependsOn). Written here, not by the L2
        // `targets.SqsQueue` (the rule is an L1 CfnRule), so the policy is SAM's exactly.
        const queuePolicy = new CfnQueuePolicy(this, `${spec.name}QueuePolicy`, {
          queues: [queue.ref],
          policyDocument: {
            Version: "2012-10-17",
            Statement: [
              {
                Sid: "EventBridgeRule",
                Effect: "Allow",
                Principal: { Service: "events.amazonaws.com" },
                Action: "sqs:SendMessage",
                Resource: queue.attrArn,
                Condition: {
                  StringEquals: { "aws:SourceAccount": { Ref: "AWS::AccountId" } },
                  ArnLike: { "aws:SourceArn": { "Fn::Sub": "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:rule/*" } },
                },
              },
            ],
          },
        });
        rule.addResourceDependency(queuePolicy);
        this.alarm(
          `${spec.name}QueueAgeAlarm`,
          `${capitalized} events have waited in the queue for over 15 minutes (Tether is behind; see the functions' logs and the concurrency share).`,
          "AWS/SQS",
          "ApproximateAgeOfOldestMessage",
          "QueueName",
          queue.attrQueueName,
          "Maximum",
          60,
          { evaluationPeriods: 5, threshold: 900 },
        );
        new CfnOutput(this, `${spec.name}QueueUrl`, { description: `The ${label} function's event queue.`, value: queue.ref });
        new CfnOutput(this, `${spec.name}QueueArn`, { description: `The ${label} function's event queue (a redrive's --destination-arn).`, value: queue.attrArn });
        new CfnOutput(this, `${spec.name}DeadLetterQueueArn`, { description: `${capitalized} events that failed or could not be delivered (a redrive's --source-arn).`, value: deadLetterQueue.attrArn });
      } else {
        new CfnPermission(this, `${spec.name}Permission`, {
          action: "lambda:InvokeFunction",
          functionName: fn.functionName,
          principal: "events.amazonaws.com",
          sourceArn: rule.attrArn,
        });
      }
      this.alarm(`${spec.name}DeadLetterAlarm`, spec.deadLetterAlarm, "AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", deadLetterQueue.attrQueueName, "Maximum", 60);
      this.alarm(`${spec.name}ErrorsAlarm`, spec.errorsAlarm, "AWS/Lambda", "Errors", "FunctionName", fn.functionName, "Sum", 300);
      deadLetterQueues.push(deadLetterQueue);
      rules.push(rule);
    }

    // EventBridge may put events it could not deliver into the dead-letter queues (the
    // queues' redrive needs no permission).
    new CfnQueuePolicy(this, "DeadLetterQueuePolicy", {
      queues: deadLetterQueues.map((q) => q.ref),
      policyDocument: {
        Version: "2012-10-17",
        Statement: [
          {
            Sid: "EventBridgeDeliveryFailures",
            Effect: "Allow",
            Principal: { Service: "events.amazonaws.com" },
            Action: "sqs:SendMessage",
            Resource: deadLetterQueues.map((q) => q.attrArn),
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
    this.alarm("NodeConditionsAlarm", "A node got a condition (it runs degraded; see `tether nodes show` and its history).", "Tether", "Conditions", "Deployment", table.ref, "Sum", 300);

    new CfnOutput(this, "ApiUrl", { description: "The management API's endpoint (TETHER_API_URL for the tether CLI).", value: api.apiEndpoint });
    new CfnOutput(this, "NodesTableName", { description: "The DynamoDB table (retained when the stack is deleted).", value: table.ref });
  }

  private alarm(
    id: string,
    description: string,
    namespace: string,
    metricName: string,
    dimension: string,
    value: string,
    statistic: string,
    period: number,
    { evaluationPeriods = 1, threshold = 0 }: { evaluationPeriods?: number; threshold?: number } = {},
  ) {
    new CfnAlarm(this, id, {
      alarmDescription: description,
      namespace,
      metricName,
      dimensions: [{ name: dimension, value }],
      statistic,
      period,
      evaluationPeriods,
      threshold,
      comparisonOperator: "GreaterThanThreshold",
      treatMissingData: "notBreaching",
    });
  }
}
