"""Writes infra/template.yaml as JSON (CloudFormation's short tags such as !Ref decoded by
cfn-lint's own loader), for the CDK app's parity test: infra/cdk/test/parity.test.ts."""

import json
import sys
from pathlib import Path

from cfnlint.decode import cfn_yaml

here = Path(__file__).parent
out = Path(sys.argv[1]) if len(sys.argv) > 1 else here / "cdk" / "sam-template.json"
out.write_text(json.dumps(cfn_yaml.load(str(here / "template.yaml")), indent=1, sort_keys=True))
print(f"wrote {out}")
