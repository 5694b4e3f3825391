"""Every name the collection uses for what NVIDIA NVSentinel writes, read back from NVSentinel's source.

The source is the snapshot tests/nvsentinel_compat/build.sh --source names (NVSENTINEL_SRC). A
snapshot that renames a label, an annotation, a state, a condition, an Event's shape or a chart
default makes one of these tests fail, naming the file. Each test parses the Go constant or chart
value, so nothing here restates NVSentinel's code.
"""
import os
import re
import subprocess

import pytest
import yaml

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import node_marks, nvsentinel, xid_catalog

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))


@pytest.fixture(scope="module")
def src():
    proc = subprocess.run([os.path.join(ROOT, "tests", "nvsentinel_compat", "build.sh"), "--source"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def read(src, path):
    with open(os.path.join(src, path)) as f:
        return f.read()


def go_strings(src, path, name_pattern):
    """{Go constant name: string value} of the constants in a file whose names match name_pattern."""
    found = dict(re.findall(r'^\s*(%s)\s+(?:\w+\s+)?=\s+"([^"]*)"' % name_pattern, read(src, path), re.M))
    assert found, "no constant matching %s in %s" % (name_pattern, path)
    return found


def chart_values(src, chart=None):
    base = os.path.join("distros", "kubernetes", "nvsentinel")
    return yaml.safe_load(read(src, os.path.join(base, "charts", chart, "values.yaml") if chart else
                               os.path.join(base, "values.yaml")))


def test_fault_quarantine_annotations(src):
    keys = go_strings(src, "fault-quarantine/pkg/common/common.go", r"\w+AnnotationKey")
    assert set(keys.values()) == set(node_marks.NVSENTINEL_QUARANTINE_ANNOTATIONS), keys
    assert node_marks.QUARANTINE_EVENT_ANNOTATION == keys["QuarantineHealthEventAnnotationKey"]
    assert node_marks.QUARANTINE_IS_CORDONED_ANNOTATION == keys["QuarantineHealthEventIsCordonedAnnotationKey"]
    assert node_marks.UNCORDONED_MANUALLY_ANNOTATION == keys["QuarantinedNodeUncordonedManuallyAnnotationKey"]
    values = go_strings(src, "fault-quarantine/pkg/common/common.go", r"\w+AnnotationValue\w*|ServiceName")
    assert values["QuarantineHealthEventIsCordonedAnnotationValueTrue"] == node_marks.NVSENTINEL_TRUE
    assert values["ServiceName"] == node_marks.NVSENTINEL_CORDONER


def test_fault_remediation_annotation(src):
    keys = go_strings(src, "fault-remediation/pkg/annotation/annotation_interface.go", r"AnnotationKey")
    assert keys == {"AnnotationKey": node_marks.REMEDIATION_STATE_ANNOTATION}
    assert set(node_marks.NVSENTINEL_ANNOTATIONS) == set(
        node_marks.NVSENTINEL_QUARANTINE_ANNOTATIONS) | {node_marks.REMEDIATION_STATE_ANNOTATION}


def test_cordon_labels_and_their_prefix(src):
    code = read(src, "fault-quarantine/pkg/reconciler/reconciler.go")
    suffixes = set(re.findall(r'= labelKeyPrefix \+ "([^"]+)"', code))
    assert suffixes == set(node_marks.NVSENTINEL_CORDON_LABELS + node_marks.NVSENTINEL_UNCORDON_LABELS)
    assert chart_values(src, "fault-quarantine")["labelPrefix"] == node_marks.NVSENTINEL_LABEL_PREFIX


def test_state_label_and_its_values(src):
    path = "commons/pkg/statemanager/statemanager.go"
    assert go_strings(src, path, "NVSentinelStateLabelKey") == {
        "NVSentinelStateLabelKey": node_marks.NVSENTINEL_STATE_LABEL}
    values = re.findall(r"^\s*\w+LabelValue\s+NVSentinelStateLabelValue\s+=\s+\"([^\"]+)\"", read(src, path), re.M)
    assert tuple(values) == node_marks.NVSENTINEL_STATES  # in lifecycle order, as declared there
    assert node_marks.NVSENTINEL_STATE_LABEL.startswith(node_marks.NVSENTINEL_STATE_PREFIX)


def test_default_rule_sets_apply_no_taint_and_no_label(src):
    rule_sets = chart_values(src, "fault-quarantine")["ruleSets"]
    assert rule_sets and all("taint" not in rule and "label" not in rule for rule in rule_sets)
    syslog = [rule for rule in rule_sets if "syslog-health-monitor" in str(rule["match"])]
    assert syslog and all(rule["cordon"]["shouldCordon"] for rule in syslog)


def test_condition_types_are_the_monitor_checks(src):
    checks = go_strings(src, "health-monitors/syslog-health-monitor/pkg/syslog-monitor/types.go", r"\w+Check")
    assert set(xid_catalog.NVSENTINEL_CHECKS) <= set(checks.values())
    assert checks["XIDErrorCheck"] == xid_catalog.NVSENTINEL_XID_CHECK
    assert checks["SXIDErrorCheck"] == xid_catalog.NVSENTINEL_SXID_CHECK
    assert checks["GPUFallenOffCheck"] == xid_catalog.NVSENTINEL_FALLEN_CHECK
    assert tuple(chart_values(src, "syslog-health-monitor")["enabledChecks"]) == xid_catalog.NVSENTINEL_CHECKS
    assert go_strings(src, "health-monitors/syslog-health-monitor/main.go", "defaultAgentName") == {
        "defaultAgentName": xid_catalog.NVSENTINEL_AGENT}
    assert '[]string{"%s"}' % xid_catalog.NVSENTINEL_FALLEN_ERROR_CODE in read(
        src, "health-monitors/syslog-health-monitor/pkg/gpufallen/gpufallen_handler.go")


def test_platform_connectors_condition_and_event_shape(src):
    path = "platform-connectors/pkg/connectors/kubernetes/process_node_events.go"
    code = read(src, path)
    consts = go_strings(src, path, r"DefaultNamespace|NoHealthFailureMsg|truncationSuffix|recommendedActionMarker")
    assert consts == {"DefaultNamespace": nvsentinel.EVENT_NAMESPACE, "NoHealthFailureMsg": nvsentinel.NO_HEALTH_FAILURES,
                      "truncationSuffix": nvsentinel.TRUNCATED, "recommendedActionMarker": "Recommended Action="}
    # The condition is named after the check; the reason is the check plus (Not)Healthy.
    assert "corev1.NodeConditionType(string(event.CheckName))" in code
    assert 'status := "%s"' % nvsentinel.UNHEALTHY_SUFFIX in code and 'status = "%s"' % nvsentinel.HEALTHY_SUFFIX in code
    # One entry per event: ErrorCode tokens, entity tokens, the message, the action, ";".
    assert 'message += fmt.Sprintf("ErrorCode:%s ", errorCode)' in code
    assert 'message += fmt.Sprintf("%s:%s ", entity.EntityType, entity.EntityValue)' in code
    assert 'message += fmt.Sprintf("Recommended Action=%s;", healthEvent.RecommendedAction.String())' in code
    # Fatal or healthy events go to the condition, the other unhealthy ones to Events.
    assert "if !event.IsHealthy && !event.IsFatal {\n\t\t\tcontinue" in code
    assert "if !healthEvent.IsHealthy && !healthEvent.IsFatal {" in code


def test_chart_defaults_the_catalog_models(src):
    monitor = chart_values(src, "syslog-health-monitor")
    rules = dict((rule["onErrorCode"], tuple(rule["cancelErrorCodes"])) for check in monitor["cancellations"]
                 if check["enabled"] and check["name"] == xid_catalog.NVSENTINEL_XID_CHECK for rule in check["rules"])
    assert rules == dict(xid_catalog.NVSENTINEL_CANCELLATIONS)
    assert monitor["processingStrategy"] == "EXECUTE_REMEDIATION"  # else no condition and no Event
    pipeline = chart_values(src)["platformConnector"]
    assert not any(step["enabled"] for step in pipeline["pipeline"]) and not pipeline["dedup"]["enabled"]


def test_release_that_matches_kernel_records_on_transport(src):
    """v1.14.0 and later read kernel records by _TRANSPORT=kernel, which user-space kmsg records carry."""
    main = read(src, "health-monitors/syslog-health-monitor/main.go")
    monitor = read(src, "health-monitors/syslog-health-monitor/pkg/syslog-monitor/syslogmonitor.go")
    assert 'check.Tags = []string{"-k"}' in main
    assert "matchExpr := FieldTransport + \"=\" + TransportKernel" in monitor
    assert "SYSLOG_FACILITY=0" not in monitor
    assert nvsentinel.MIN_VERSION == (1, 14, 0)
