#!/usr/bin/env bash
# Proves that each emulator rule is held by its patch: with that one patch disabled
# (TETHER_MOTO_DISABLE), the rule's test must fail on one of its own checks.
# Run by `make test` before the main test run; prints one line per rule.
# A rule's test is named within tests/tests/emulator/rules.rs, or as `module::test` for one in
# another module of tests/tests/emulator/ (e.g. `volume_rules::instance_status_answers_as_aws_does`).
set -uo pipefail
cd "$(dirname "$0")/../.."

rules=(
  "eni-release  terminating_an_instance_releases_its_enis"
  "eni-in-use   launching_on_an_eni_in_use_fails_and_launches_nothing"
  "eni-delete   deleting_an_eni_disassociates_its_elastic_ip"
  "private-ip   requested_private_ips_are_checked_as_aws_does"
  "private-ip   random_private_ips_are_unique_and_never_reserved"
  "cidr-reservation random_private_ips_never_take_an_explicit_reservation"
  "client-token a_client_token_used_again_returns_the_original_instance"
  "eni-az       an_eni_is_used_only_in_its_own_availability_zone"
  "volume-settings a_launch_s_block_device_settings_provision_its_volumes"
  "nic-sg       network_interfaces_exclude_instance_level_security_groups"
  "device-index two_network_interfaces_at_one_device_index_are_refused"
  "eni-az       an_extra_eni_from_another_availability_zone_is_refused"
  "secondary-ip secondary_private_ips_are_unique_in_the_subnet_and_never_reserved"
  "secondary-ip picked_secondary_private_ips_are_free_and_never_reserved"
  "cidr-reservation picked_secondary_private_ips_are_free_and_never_reserved"
  "ipv6         ipv6_addresses_come_from_the_subnet_s_ipv6_cidr_and_are_unique"
  "public-ip    an_eni_s_public_ip_setting_applies_while_it_is_eth0"
  "capacity-reservation a_launch_keeps_its_capacity_reservation_specification"
  "launch-template launch_template_versions_read_back_as_stored"
  "source-dest  an_instance_s_source_dest_check_is_its_primary_eni_s"
  "volume-attach volume_rules::attaching_and_detaching_volumes_check_volume_and_instance_states"
  "volume-termination volume_rules::terminating_an_instance_honours_each_volume_s_delete_on_termination"
  "instance-status volume_rules::instance_status_answers_as_aws_does"
)
# `rules::test` for a bare test name; the file whose panic proves the rule.
test_path() { [[ $1 == *::* ]] && echo "$1" || echo "rules::$1"; }
test_file() { local path; path=$(test_path "$1"); echo "tests/tests/emulator/${path%%::*}.rs"; }
# One test process (and emulator) per proof, PROVE_JOBS (4) at a time: each spends most of
# its time starting the emulator, so they overlap well even on 2 cores.
binary=$(cargo test -q -p tether-tests --test emulator --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "emulator":
        print(m["executable"])')
if [[ -z $binary ]]; then
  echo "rule proofs: the emulator test binary did not build"
  exit 1
fi
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
for i in "${!rules[@]}"; do
  read -r patch test <<<"${rules[$i]}"
  while (( $(jobs -rp | wc -l) >= ${PROVE_JOBS:-4} )); do
    wait -n
  done
  (
    cd tests && TETHER_MOTO_DISABLE="$patch" RUST_BACKTRACE=0 "$binary" --exact "emulator::$(test_path "$test")" >"$logs/$i" 2>&1
    echo $? >"$logs/$i.status"
  ) &
done
wait
status=0
for i in "${!rules[@]}"; do
  read -r patch test <<<"${rules[$i]}"
  log=$logs/$i
  file=$(test_file "$test")
  if [[ $(cat "$log.status") == 0 ]]; then
    echo "rule $patch: FAIL: $test passed with the patch disabled"
    status=1
  elif grep -q "panicked at $file" "$log"; then
    why=$(grep -A1 -m1 "panicked at $file" "$log" | tail -n 1 | cut -c1-100)
    echo "rule $patch: fails without its patch: $test: $why"
  else
    echo "rule $patch: FAIL: $test failed for another reason:"
    tail -n 20 "$log"
    status=1
  fi
done
exit $status
