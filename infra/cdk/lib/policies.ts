// The IAM statements and API routes, written as the SAM template has them (test/parity.test.ts
// fails when the two disagree).

const arn = (resource: string) => ({ "Fn::Sub": `arn:\${AWS::Partition}:ec2:\${AWS::Region}:\${AWS::AccountId}:${resource}` });
const managed = { StringEquals: { "ec2:ResourceTag/tether:managed": "true" } };
const requestsManaged = { StringEquals: { "aws:RequestTag/tether:managed": "true" } };

/** What every function may do in EC2: only on what Tether tagged, but for the reads (AWS does
 * not scope Describe*) and the user's own Elastic IP and AMI (Tether does not tag those). */
export function ec2PolicyStatements(): object[] {
  return [
    {
      Sid: "Read",
      Effect: "Allow",
      Action: [
        "ec2:DescribeInstances",
        "ec2:DescribeNetworkInterfaces",
        "ec2:DescribeAddresses",
        "ec2:DescribeSubnets",
        "ec2:DescribeInstanceTypes",
        "ec2:DescribeLaunchTemplateVersions",
        "ec2:DescribeVolumes",
        "ec2:DescribeInstanceAttribute",
        "ec2:DescribeImages",
        "ec2:DescribeSnapshots",
        "ec2:DescribeInstanceStatus",
        "ec2:GetSubnetCidrReservations",
      ],
      Resource: "*",
    },
    // AWS authorizes a subnet CIDR reservation's creation on the subnet only, its deletion on nothing.
    { Sid: "ReserveChosenAddresses", Effect: "Allow", Action: "ec2:CreateSubnetCidrReservation", Resource: arn("subnet/*") },
    { Sid: "ReleaseChosenAddresses", Effect: "Allow", Action: "ec2:DeleteSubnetCidrReservation", Resource: "*" },
    { Sid: "CreateTaggedEni", Effect: "Allow", Action: "ec2:CreateNetworkInterface", Resource: arn("network-interface/*"), Condition: requestsManaged },
    // Data volumes: made tagged, attached only to Tether's instances, deleted only when tagged.
    { Sid: "CreateTaggedVolume", Effect: "Allow", Action: "ec2:CreateVolume", Resource: arn("volume/*"), Condition: requestsManaged },
    { Sid: "AttachTaggedVolume", Effect: "Allow", Action: "ec2:AttachVolume", Resource: [arn("volume/*"), arn("instance/*")], Condition: managed },
    { Sid: "SnapshotTaggedVolume", Effect: "Allow", Action: "ec2:CreateSnapshot", Resource: arn("volume/*"), Condition: managed },
    { Sid: "CreateTaggedSnapshot", Effect: "Allow", Action: "ec2:CreateSnapshot", Resource: { "Fn::Sub": "arn:${AWS::Partition}:ec2:${AWS::Region}::snapshot/*" }, Condition: requestsManaged },
    { Sid: "EniInSubnetAndGroups", Effect: "Allow", Action: ["ec2:CreateNetworkInterface", "ec2:RunInstances"], Resource: [arn("subnet/*"), arn("security-group/*")] },
    { Sid: "LaunchTaggedInstance", Effect: "Allow", Action: "ec2:RunInstances", Resource: arn("instance/*"), Condition: requestsManaged },
    { Sid: "LaunchOnTaggedEni", Effect: "Allow", Action: "ec2:RunInstances", Resource: arn("network-interface/*"), Condition: managed },
    {
      Sid: "LaunchWithUsersImageAndKey",
      Effect: "Allow",
      Action: "ec2:RunInstances",
      Resource: [
        { "Fn::Sub": "arn:${AWS::Partition}:ec2:${AWS::Region}::image/*" },
        arn("key-pair/*"),
        arn("volume/*"),
        arn("spot-instances-request/*"),
      ],
    },
    {
      Sid: "TagOnCreate",
      Effect: "Allow",
      Action: "ec2:CreateTags",
      Resource: [arn("instance/*"), arn("network-interface/*"), arn("elastic-ip/*"), arn("volume/*"), { "Fn::Sub": "arn:${AWS::Partition}:ec2:${AWS::Region}::snapshot/*" }],
      Condition: { StringEquals: { "ec2:CreateAction": ["RunInstances", "CreateNetworkInterface", "AllocateAddress", "CreateVolume", "CreateSnapshot"] } },
    },
    {
      Sid: "ChangeTaggedResources",
      Effect: "Allow",
      Action: ["ec2:TerminateInstances", "ec2:DeleteNetworkInterface", "ec2:ModifyNetworkInterfaceAttribute", "ec2:ReleaseAddress", "ec2:DeleteVolume", "ec2:ModifyInstanceAttribute"],
      Resource: [arn("instance/*"), arn("network-interface/*"), arn("elastic-ip/*"), arn("volume/*")],
      Condition: managed,
    },
    {
      Sid: "IdentityOnTaggedEni",
      Effect: "Allow",
      Action: [
        "ec2:AssignPrivateIpAddresses",
        "ec2:UnassignPrivateIpAddresses",
        "ec2:AssignIpv6Addresses",
        "ec2:UnassignIpv6Addresses",
        "ec2:CreateTags",
        "ec2:DeleteTags",
      ],
      Resource: arn("network-interface/*"),
      Condition: managed,
    },
    { Sid: "AllocateTaggedAddress", Effect: "Allow", Action: "ec2:AllocateAddress", Resource: arn("elastic-ip/*"), Condition: requestsManaged },
    { Sid: "AddressOnTaggedEni", Effect: "Allow", Action: "ec2:AssociateAddress", Resource: arn("network-interface/*"), Condition: managed },
    // The user's own Elastic IP is not Tether's to tag: only the ENI side can be scoped.
    { Sid: "UsersAddress", Effect: "Allow", Action: ["ec2:AssociateAddress", "ec2:DisassociateAddress"], Resource: arn("elastic-ip/*") },
    {
      "Fn::If": [
        "HasInstanceRole",
        {
          Sid: "PassInstanceRole",
          Effect: "Allow",
          Action: "iam:PassRole",
          Resource: { Ref: "InstanceRoleArn" },
          Condition: { StringEquals: { "iam:PassedToService": "ec2.amazonaws.com" } },
        },
        { Ref: "AWS::NoValue" },
      ],
    },
  ];
}

/** Import (API only): marks an existing instance and its ENI as Tether's. */
export const IMPORT_POLICY_STATEMENTS: object[] = [
  {
    Sid: "TagImported",
    Effect: "Allow",
    Action: "ec2:CreateTags",
    Resource: [arn("instance/*"), arn("network-interface/*"), arn("volume/*")],
    Condition: { "ForAllValues:StringEquals": { "aws:TagKeys": ["tether:node-id", "tether:managed", "tether:device-index", "tether:device-name"] } },
  },
];

/** The table and its indexes, nothing else. */
export function tablePolicyStatements(tableArn: string): object[] {
  return [
    {
      Sid: "NodesTable",
      Effect: "Allow",
      Action: ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:UpdateItem", "dynamodb:ConditionCheckItem", "dynamodb:Query", "dynamodb:Scan"],
      Resource: [
        tableArn,
        { "Fn::Sub": "${NodesTable.Arn}/index/by-instance" },
        { "Fn::Sub": "${NodesTable.Arn}/index/by-group" },
        { "Fn::Sub": "${NodesTable.Arn}/index/by-kind" },
      ],
    },
  ];
}

/** The management API's routes (functions/api/src/routes.rs). */
export const API_ROUTES: [string, string][] = [
  ["GET", "/nodes"],
  ["POST", "/nodes"],
  ["POST", "/nodes/import"],
  ["GET", "/nodes/{id}"],
  ["PATCH", "/nodes/{id}"],
  ["DELETE", "/nodes/{id}"],
  ["GET", "/nodes/{id}/history"],
  ["POST", "/nodes/{id}/pause"],
  ["POST", "/nodes/{id}/resume"],
  ["POST", "/nodes/{id}/recycle"],
  ["POST", "/nodes/{id}/deallocate"],
  ["GET", "/groups"],
  ["POST", "/groups"],
  ["GET", "/groups/{id}"],
  ["PATCH", "/groups/{id}"],
  ["DELETE", "/groups/{id}"],
  ["GET", "/groups/{id}/members"],
  ["POST", "/groups/{id}/pause"],
  ["POST", "/groups/{id}/resume"],
  ["POST", "/groups/{id}/recycle"],
  ["POST", "/groups/{id}/scale"],
  ["POST", "/groups/{id}/deallocate"],
];
