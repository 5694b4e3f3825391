# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""AWX readiness: the surveys, awx/configure_awx.yml and the execution environment definition.

The survey rules are AWX's own, restated here: what its API refuses when a survey is saved
(JobTemplateSurveySpec._validate_spec_data) and what it refuses when a job is launched
(SurveyJobTemplateMixin._survey_element_validation). A default that fails the launch rules is
silently left out of the job's extra vars by AWX, so every default must pass them.

configure_awx.yml is also run for real against a small in-process stand-in for AWX's REST API on
127.0.0.1, which keeps what the awx.awx modules create and answers as AWX does for these calls.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy
import fnmatch
import glob
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import pytest
import yaml

from ansible_collections.gpu_resilience.fault_injection.plugins.module_utils import shim_patch, xid_catalog

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
AWX = os.path.join(ROOT, "awx")
SURVEY_DIR = os.path.join(AWX, "surveys")
SURVEY_FILES = sorted(glob.glob(os.path.join(SURVEY_DIR, "*.json")))
COLLECTION_PREFIX = "gpu_resilience.fault_injection."

# The playbooks AWX users run, each with one job template and one survey of the same name.
PLAYBOOKS = ("xid79_e2e", "fleet_drill", "all_xids", "cleanup", "deploy_agent", "remove_agent",
             "healthcheck", "return_to_service", "demo_workload")

# AWX's awx.main.constants.SURVEY_TYPE_MAPPING: question type -> type of its default and answers.
SURVEY_TYPES = {"text": str, "textarea": str, "password": str, "multiplechoice": str, "multiselect": str,
                "integer": int, "float": (float, int)}
QUESTION_KEYS = {"question_name", "question_description", "variable", "type", "required", "default",
                 "choices", "min", "max", "new_question"}
# AWX puts awx_* and tower_* job variables into every job; Ansible owns ansible_*.
RESERVED_PREFIXES = ("awx_", "tower_", "ansible_")
K8S_CREDENTIAL_TYPE = "OpenShift or Kubernetes API Bearer Token"


def load_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f)


def load_json(path):
    with open(path) as f:
        return json.load(f)


# --- AWX's survey rules ----------------------------------------------------------------------------

def spec_errors(survey):
    """Why AWX's API would refuse to save this survey, plus the house rules on top (empty: fine)."""
    errors = []
    for field, kind in (("name", str), ("description", str), ("spec", list)):
        if not isinstance(survey.get(field), kind):
            errors.append("%s must be a %s" % (field, kind.__name__))
    if errors:
        return errors
    if not survey["spec"]:
        errors.append("spec has no questions")
    extra = set(survey) - {"name", "description", "spec"}
    if extra:
        errors.append("unknown survey keys %s" % sorted(extra))
    seen = set()
    for idx, question in enumerate(survey["spec"]):
        where = "question %d (%s)" % (idx, question.get("variable") if isinstance(question, dict) else "?")
        if not isinstance(question, dict):
            errors.append("%s is not an object" % where)
            continue
        for field in ("type", "question_name", "variable", "required"):
            kind = bool if field == "required" else str
            if not isinstance(question.get(field), kind):
                errors.append("%s: %s must be a %s" % (where, field, kind.__name__))
        if errors:
            continue
        unknown = set(question) - QUESTION_KEYS
        if unknown:
            errors.append("%s: unknown keys %s" % (where, sorted(unknown)))
        if not isinstance(question.get("question_description"), str) or not question["question_description"]:
            errors.append("%s: question_description must say what the answer does" % where)
        variable, qtype = question["variable"], question["type"]
        if variable in seen:
            errors.append("%s: variable duplicated" % where)
        seen.add(variable)
        if not re.match(r"^[a-z_][a-z0-9_]*$", variable) or variable.startswith(RESERVED_PREFIXES):
            errors.append("%s: variable must be a snake_case name outside %s" % (where, RESERVED_PREFIXES))
        if qtype not in SURVEY_TYPES:
            errors.append("%s: type %r is not one of %s" % (where, qtype, sorted(SURVEY_TYPES)))
            continue
        default = question.get("default")
        if "default" in question and default != "" and not isinstance(default, SURVEY_TYPES[qtype]):
            errors.append("%s: default %r is not a %s" % (where, default, qtype))
        if isinstance(default, bool):
            errors.append("%s: default %r is a bool; AWX has no bool question (use multiplechoice false/true)"
                          % (where, default))
        for key in ("min", "max"):
            if question.get(key) is not None and (not isinstance(question[key], int) or isinstance(question[key], bool)):
                errors.append("%s: %s must be an integer" % (where, key))
        if isinstance(question.get("min"), int) and isinstance(question.get("max"), int) and question["min"] > question["max"]:
            errors.append("%s: min is above max" % where)
        if qtype in ("multiplechoice", "multiselect"):
            choices = question.get("choices")
            if not isinstance(choices, list) or not choices or not all(isinstance(c, str) and c.strip() for c in choices):
                errors.append("%s: choices must be a non-empty list of strings" % where)
                continue
            if len(set(choices)) != len(choices):
                errors.append("%s: choices repeat" % where)
            defaults = default.splitlines() if isinstance(default, str) else (default or [])
            if qtype == "multiplechoice" and len(defaults) > 1:
                errors.append("%s: a multiple choice question has one default" % where)
            if any(d not in choices for d in defaults):
                errors.append("%s: default %r is not among the choices" % (where, default))
        elif "choices" in question:
            errors.append("%s: choices given for a %s question" % (where, qtype))
    return errors


def answer_errors(question, answers):
    """Why AWX would refuse these answers (a dict of variable -> value) at launch (empty: fine)."""
    variable, qtype = question["variable"], question["type"]
    if variable not in answers:
        return ["%s missing" % variable] if question["required"] else []
    value = answers[variable]
    low, high = question.get("min"), question.get("max")
    low = None if low in ("", None) else low
    high = None if high in ("", None) else high
    if qtype in ("text", "textarea", "password"):
        if not isinstance(value, str):
            return ["%s: %r is not a string" % (variable, value)]
        size = len(value)
    elif qtype == "integer":
        if not isinstance(value, int) or isinstance(value, bool):  # AWX: type(value) != int
            return ["%s: %r is not an integer" % (variable, value)]
        size = value
    elif qtype == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return ["%s: %r is not a number" % (variable, value)]
        size = value
    elif qtype == "multiplechoice":
        choices = question["choices"] if isinstance(question["choices"], list) else question["choices"].split("\n")
        return [] if value in choices else ["%s: %r is not one of %s" % (variable, value, choices)]
    else:  # multiselect
        if not isinstance(value, list):
            return ["%s: %r is not a list" % (variable, value)]
        return ["%s: %r is not a choice" % (variable, v) for v in value if v not in question["choices"]]
    errors = []
    if low is not None and size < int(low):
        errors.append("%s: %r is below the minimum %s" % (variable, value, low))
    if high is not None and size > int(high):
        errors.append("%s: %r is above the maximum %s" % (variable, value, high))
    return errors


def default_errors(survey):
    """Defaults AWX would drop: each default must pass the launch rules.

    A required question may leave its default empty: then the person launching must answer it.
    """
    errors = []
    for question in survey["spec"]:
        if "default" not in question:
            errors.append("%s has no default" % question["variable"])
        elif question["required"] and question["default"] == "":
            continue
        else:
            errors.extend(answer_errors(question, {question["variable"]: question["default"]}))
    return errors


def test_the_rules_refuse_what_awx_refuses():
    good = {"name": "n", "description": "d", "spec": [
        {"question_name": "Q", "question_description": "D", "variable": "a_var", "type": "integer",
         "required": False, "default": 3, "min": 1, "max": 5}]}
    assert spec_errors(good) == [] and default_errors(good) == []

    def broken(**change):
        survey = copy.deepcopy(good)
        survey["spec"][0].update(change)
        return survey

    assert spec_errors({"name": "n", "description": "d", "spec": []})
    assert spec_errors(dict(good, spec=good["spec"] * 2))  # the same variable twice
    assert spec_errors(broken(type="boolean"))
    assert spec_errors(broken(default="3"))  # a string default for an integer question
    assert spec_errors(broken(required="yes"))
    assert spec_errors(broken(variable="awx_job_id"))
    assert spec_errors(broken(min=6))
    assert default_errors(broken(default=9))  # above max: AWX would drop it
    assert spec_errors(broken(type="multiplechoice", default="c", choices=["a", "b"], min=None, max=None))
    assert spec_errors(broken(type="multiplechoice", default="a", choices="a\nb", min=None, max=None))
    assert default_errors(broken(type="text", default="", min=1, max=5))  # optional, empty, min 1: dropped
    assert default_errors(broken(type="text", default="", min=1, max=5, required=True)) == []
    assert answer_errors(good["spec"][0], {"a_var": True}) == ["a_var: True is not an integer"]


# --- the surveys ------------------------------------------------------------------------------------

def test_every_playbook_has_a_survey_file():
    assert sorted(os.path.basename(p)[:-len(".json")] for p in SURVEY_FILES) == sorted(PLAYBOOKS)


@pytest.mark.parametrize("path", SURVEY_FILES, ids=os.path.basename)
def test_survey_follows_awx_rules(path):
    survey = load_json(path)
    assert spec_errors(survey) == []
    assert default_errors(survey) == []


def survey_questions(name):
    return dict((q["variable"], q) for q in load_json(os.path.join(SURVEY_DIR, name + ".json"))["spec"])


def test_xid_question_offers_the_catalog():
    question = survey_questions("fleet_drill")["fault_scenario_xid"]
    assert question["choices"] == [str(code) for code in sorted(xid_catalog.codes())]
    assert question["default"] == "79"


def test_workload_kinds_are_kinds_the_shim_knows():
    question = survey_questions("xid79_e2e")["fault_scenario_workload_kind"]
    assert question["default"] == "Deployment"
    assert set(question["choices"]) <= set(shim_patch.DEFAULT_API_VERSIONS)


@pytest.mark.parametrize("path", SURVEY_FILES, ids=os.path.basename)
def test_yes_no_questions_answer_false_or_true(path):
    # AWX has no boolean question; the playbooks take the strings "true"/"false" through `| bool`.
    for question in load_json(path)["spec"]:
        if question["variable"].endswith(("_confirm", "_cordon", "_remove_crd", "_suspend", "_clear_nvsentinel",
                                          "_verify_only")):
            assert question["type"] == "multiplechoice" and question["choices"] == ["false", "true"], question


def test_docs_name_every_survey_variable():
    with open(os.path.join(ROOT, "docs", "awx.md")) as f:
        docs = f.read()
    missing = sorted(v for p in PLAYBOOKS for v in survey_questions(p) if "`%s`" % v not in docs)
    assert not missing, "docs/awx.md does not describe %s" % missing


def test_the_brief_variables_are_asked():
    expected = {
        "xid79_e2e": {"fault_scenario_workload_kind", "fault_scenario_workload_name", "fault_scenario_workload_namespace",
                      "fault_scenario_target_node", "fault_scenario_gpu", "fault_scenario_detector",
                      "fault_scenario_nvsentinel_stage", "fault_scenario_drain",
                      "fault_scenario_check", "fault_scenario_check_url", "fault_scenario_check_port",
                      "fault_scenario_report_dir", "fault_scenario_allowed_namespaces", "fault_scenario_max_nodes",
                      "fault_scenario_confirm"},
        "fleet_drill": {"fault_scenario_xid", "fault_scenario_node_selector", "fault_scenario_node_count",
                        "fault_scenario_node_percent", "fault_scenario_max_nodes", "fault_scenario_max_percent",
                        "fault_scenario_detector", "fault_scenario_nvsentinel_stage", "fault_scenario_confirm",
                        "fault_scenario_report_dir"},
        "all_xids": {"all_xids_node", "all_xids_codes", "all_xids_detector"},
        "cleanup": {"fault_cleanup_drill", "fault_cleanup_ledger_namespace", "fault_cleanup_verify_only"},
        "demo_workload": {"demo_workload_state", "demo_workload_namespace", "demo_workload_replicas"},
    }
    for name, variables in expected.items():
        assert set(survey_questions(name)) == variables, name
    assert survey_questions("xid79_e2e")["fault_scenario_workload_name"]["required"] is True
    assert survey_questions("all_xids")["all_xids_node"]["required"] is True
    assert survey_questions("cleanup")["fault_cleanup_drill"]["default"] == ""


# --- the variables each playbook accepts ------------------------------------------------------------

def _task_lists(node):
    """Every task of a play or block, blocks included, depth first."""
    for key in ("pre_tasks", "tasks", "post_tasks", "handlers", "block", "rescue", "always"):
        for task in node.get(key) or []:
            if isinstance(task, dict):
                yield task
                yield from _task_lists(task)


def roles_of(play):
    names = []
    for role in play.get("roles") or []:
        names.append(role if isinstance(role, str) else role.get("role") or role.get("name"))
    for task in _task_lists(play):
        for action in ("include_role", "import_role"):
            for key in (action, "ansible.builtin." + action, "ansible.legacy." + action):
                if isinstance(task.get(key), dict):
                    names.append(task[key].get("name"))
    return [n for n in names if n]


def role_options(role):
    """Options of every entry point of one of this collection's roles (None for other roles)."""
    if role.startswith(COLLECTION_PREFIX):
        role = role[len(COLLECTION_PREFIX):]
    elif "." in role:
        return None
    path = os.path.join(ROOT, "roles", role, "meta", "argument_specs.yml")
    assert os.path.exists(path), "role %s has no meta/argument_specs.yml" % role
    specs = (load_yaml(path) or {}).get("argument_specs") or {}
    return set(name for entry in specs.values() for name in (entry.get("options") or {}))


def accepted_variables(playbook):
    """Variables the playbook declares in a play's vars: or in the argument specs of its roles."""
    plays = load_yaml(playbook) or []
    accepted = set()
    for play in plays:
        accepted.update((play.get("vars") or {}).keys())
        for role in roles_of(play):
            accepted.update(role_options(role) or ())
    return accepted


@pytest.mark.parametrize("name", PLAYBOOKS)
def test_survey_variables_are_variables_the_playbook_accepts(name):
    playbook = os.path.join(ROOT, "playbooks", name + ".yml")
    assert os.path.exists(playbook), "playbooks/%s.yml does not exist (yet)" % name
    unknown = set(survey_questions(name)) - accepted_variables(playbook)
    assert not unknown, "playbooks/%s.yml declares neither in vars: nor in its roles' argument specs: %s" % (
        name, sorted(unknown))


def declarations(playbook):
    """variable -> (argument spec or None, the playbook's own default or _NONE) for a playbook."""
    found = {}
    for play in load_yaml(playbook) or []:
        for role in roles_of(play):
            if role.startswith(COLLECTION_PREFIX) or "." not in role:
                short = role[len(COLLECTION_PREFIX):] if role.startswith(COLLECTION_PREFIX) else role
                specs = load_yaml(os.path.join(ROOT, "roles", short, "meta", "argument_specs.yml"))["argument_specs"]
                for entry in specs.values():
                    for option, spec in (entry.get("options") or {}).items():
                        found.setdefault(option, [spec, spec.get("default", _NONE)])
        for variable, value in (play.get("vars") or {}).items():
            found.setdefault(variable, [None, _NONE])[1] = value  # play vars win over role defaults
    return found


_NONE = object()
# Survey defaults that differ from the playbook's on purpose.
DIFFERENT_DEFAULTS = {
    # The role's default is $FAULT_DRILL_REPORT_DIR or $PWD/reports; in AWX's job container neither
    # is set to a writable place, so the survey names one.
    "fault_scenario_report_dir",
}


def same_value(survey_default, declared):
    """Whether a survey's default means the playbook's default; surveys answer in text."""
    if isinstance(declared, bool):
        return survey_default == str(declared).lower()
    if isinstance(declared, (int, float)) and isinstance(survey_default, (int, float)):
        return survey_default == declared
    if isinstance(declared, list):  # asked as comma-separated text
        return survey_default == ",".join(str(v) for v in declared)
    return survey_default == str(declared)


@pytest.mark.parametrize("name", PLAYBOOKS)
def test_survey_matches_the_argument_specs_and_defaults(name):
    playbook = os.path.join(ROOT, "playbooks", name + ".yml")
    assert os.path.exists(playbook), "playbooks/%s.yml does not exist (yet)" % name
    declared = declarations(playbook)
    for variable, question in survey_questions(name).items():
        spec, default = declared.get(variable, (None, _NONE))
        if spec is not None:
            kind, choices = spec.get("type", "str"), spec.get("choices")
            if kind == "bool":
                assert question["type"] == "multiplechoice" and question["choices"] == ["false", "true"], variable
            elif kind == "int":
                # A closed set of numbers (the XID catalog) may be a choice of their decimal strings.
                assert question["type"] == "integer" or (
                    question["type"] == "multiplechoice" and all(c.isdigit() for c in question["choices"])), variable
            elif kind == "float":
                assert question["type"] in ("integer", "float"), variable
            elif kind in ("str", "path"):
                assert question["type"] in ("text", "textarea", "password", "multiplechoice"), variable
            if choices:
                assert question["type"] == "multiplechoice", "%s has choices %s: ask with multiplechoice" % (variable, choices)
                assert set(question["choices"]) <= set(str(c) for c in choices), variable
        if variable in DIFFERENT_DEFAULTS or default is _NONE or default is None:
            continue
        if isinstance(default, str) and "{{" in default:
            continue
        if question["required"] and question["default"] == "":
            continue
        assert same_value(question["default"], default), "%s: the survey's default %r, the playbook's %r" % (
            variable, question["default"], default)


# --- configure_awx.yml ------------------------------------------------------------------------------

def configure_play():
    plays = load_yaml(os.path.join(AWX, "configure_awx.yml"))
    assert len(plays) == 1
    return plays[0]


def task_using(module):
    tasks = [t for t in configure_play()["tasks"] if module in t]
    assert len(tasks) == 1, module
    return tasks[0]


def job_templates():
    return configure_play()["vars"]["awx_job_templates"]


def test_one_job_template_per_playbook_with_its_survey():
    templates = job_templates()
    assert len(set(t["name"] for t in templates)) == len(templates)
    assert sorted(t["playbook"] for t in templates) == sorted("playbooks/%s.yml" % p for p in PLAYBOOKS)
    for template in templates:
        assert template["survey"] == os.path.basename(template["playbook"])[:-len(".yml")] + ".json", template
        assert os.path.exists(os.path.join(SURVEY_DIR, template["survey"])), template


@pytest.mark.parametrize("playbook", ["playbooks/%s.yml" % p for p in PLAYBOOKS])
def test_job_template_playbook_exists(playbook):
    assert any(t["playbook"] == playbook for t in job_templates())
    assert os.path.exists(os.path.join(ROOT, playbook)), "%s does not exist (yet)" % playbook


def test_job_templates_use_the_surveys_the_ee_and_the_credential():
    task = task_using("awx.awx.job_template")
    args = task["awx.awx.job_template"]
    assert task["loop"] == "{{ awx_job_templates }}"
    assert args["playbook"] == "{{ item.playbook }}"
    assert args["survey_enabled"] is True
    assert "'/surveys/' ~ item.survey" in args["survey_spec"] and "from_json" in args["survey_spec"]
    assert args["credentials"] == ["{{ awx_k8s_credential_name }}"]
    assert args["execution_environment"] == "{{ awx_ee_name }}"
    assert args["allow_simultaneous"] is False


def test_credential_is_the_builtin_bearer_token_type_with_values_from_variables():
    task = task_using("awx.awx.credential")
    args = task["awx.awx.credential"]
    assert args["credential_type"] == K8S_CREDENTIAL_TYPE
    assert task["no_log"] is True
    assert isinstance(args["inputs"], str) and args["inputs"].strip().startswith("{{")
    for key in ("awx_k8s_host", "awx_k8s_bearer_token", "awx_k8s_ssl_ca_cert"):
        assert key in args["inputs"]
        assert configure_play()["vars"][key] == "", "%s must come from the caller, never a literal" % key


# --- the execution environment ----------------------------------------------------------------------

def pins(path):
    """name -> version of every `name==version` line; any other requirement line fails."""
    found = {}
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)$", line)
            assert match, "%s: %r is not pinned with ==" % (path, line)
            found[match.group(1).lower()] = match.group(2)
    return found


ROOT_PINS = pins(os.path.join(ROOT, "requirements.txt"))


@pytest.mark.parametrize("path", ["awx/requirements.txt", "meta/ee-requirements.txt"])
def test_ee_python_pins_agree_with_the_repository(path):
    found = pins(os.path.join(ROOT, path))
    assert {"kubernetes", "jmespath"} <= set(found), path
    for name, version in found.items():
        assert name in ROOT_PINS, "%s: %s is not in requirements.txt" % (path, name)
        assert version == ROOT_PINS[name], "%s: %s==%s, requirements.txt has %s" % (path, name, version, ROOT_PINS[name])
    # Tools of development and test, and Ansible itself, have no place in the image's requirements.
    assert not set(found) & {"ansible", "ansible-core", "molecule", "pytest", "ansible-lint", "antsibull-changelog"}


def ee_definition():
    return load_yaml(os.path.join(AWX, "execution-environment.yml"))


def test_ee_definition_is_version_3_with_what_ansible_builder_requires():
    ee = ee_definition()
    assert ee["version"] == 3
    assert set(ee) <= {"version", "build_arg_defaults", "dependencies", "images", "additional_build_steps",
                       "additional_build_files", "options"}
    base = ee["images"]["base_image"]["name"]
    repository, colon, tag = base.rpartition(":")
    assert colon, "base image %s has no tag" % base
    assert "@sha256:" in base or ("/" not in tag and tag and tag != "latest"), "base image %s is not pinned" % base
    assert repository in ("quay.io/ansible/awx-ee", "ghcr.io/ansible-community/community-ee-base"), base
    deps = ee["dependencies"]
    assert set(deps) <= {"python", "galaxy", "system", "python_interpreter", "ansible_core", "ansible_runner", "exclude"}
    assert deps["ansible_core"] == {"package_pip": "ansible-core==" + ROOT_PINS["ansible-core"]}
    assert re.match(r"^ansible-runner==[0-9][0-9.]*$", deps["ansible_runner"]["package_pip"])
    assert deps["python_interpreter"]["python_path"].startswith("/")
    for key in ("galaxy", "python", "system"):
        if isinstance(deps.get(key), str):
            assert os.path.exists(os.path.join(AWX, deps[key])), deps[key]
    for entry in ee.get("additional_build_files", []):
        assert set(entry) == {"src", "dest"} and not os.path.isabs(entry["dest"]) and ".." not in entry["dest"]


def test_ee_needs_no_compiler():
    compilers = {"gcc", "gcc-c++", "make", "clang", "cc", "python3-devel", "python3.11-devel"}
    bindeps = [os.path.join(ROOT, "meta", "ee-bindep.txt")]
    system = ee_definition()["dependencies"].get("system")
    if isinstance(system, str):
        bindeps.append(os.path.join(AWX, system))
    for path in bindeps:
        with open(path) as f:
            names = [line.split()[0] for line in f if line.split("#", 1)[0].strip()]
        assert not set(names) & compilers, path


def test_ee_collections_are_kubernetes_core_as_in_ansible_and_this_collection():
    collections = load_yaml(os.path.join(AWX, "requirements.yml"))["collections"]
    by_name = dict((c["name"], c) for c in collections)
    if importlib.metadata.version("ansible") != ROOT_PINS["ansible"]:
        pytest.skip("the virtualenv's ansible is not the one requirements.txt pins")
    import ansible  # ansible-core; the `ansible` package's collections lie next to it
    manifest = os.path.join(os.path.dirname(os.path.dirname(ansible.__file__)),
                            "ansible_collections", "kubernetes", "core", "MANIFEST.json")
    assert by_name["kubernetes.core"]["version"] == load_json(manifest)["collection_info"]["version"]

    galaxy = load_yaml(os.path.join(ROOT, "galaxy.yml"))
    tarball = "%s-%s-%s.tar.gz" % (galaxy["namespace"], galaxy["name"], galaxy["version"])
    ours = [c for c in collections if c.get("type") == "file"]
    assert len(ours) == 1 and os.path.basename(ours[0]["name"]) == tarball, "requirements.yml must name %s" % tarball
    # The tarball reaches the build context through additional_build_files, next to requirements.yml.
    copied = [f for f in ee_definition()["additional_build_files"] if fnmatch.fnmatch(tarball, os.path.basename(f["src"]))]
    assert len(copied) == 1 and ours[0]["name"] == copied[0]["dest"] + "/" + tarball
    assert os.path.normpath(os.path.join(AWX, os.path.dirname(copied[0]["src"]))) == os.path.join(ROOT, "build", "ee")


def test_collection_declares_its_own_ee_dependencies():
    # Without meta/execution-environment.yml ansible-builder would install the repository's
    # requirements.txt (molecule, pytest, ansible-lint, ...) into every image with this collection.
    meta = load_yaml(os.path.join(ROOT, "meta", "execution-environment.yml"))
    assert meta["version"] == 1
    assert meta["dependencies"] == {"python": "meta/ee-requirements.txt", "system": "meta/ee-bindep.txt"}
    for path in meta["dependencies"].values():
        assert os.path.exists(os.path.join(ROOT, path))


# --- configure_awx.yml against a stand-in for AWX's API ---------------------------------------------

class FakeAWX(ThreadingHTTPServer):
    """Just enough of AWX's REST API (v2) for the awx.awx modules configure_awx.yml uses.

    Objects are kept in memory; lists filter on their query parameters; job templates check their
    playbook against the project's files and their survey with spec_errors(), as AWX does.
    """

    daemon_threads = True
    SUBRESOURCES = {
        "projects": ["update", "notification_templates_started", "notification_templates_success",
                     "notification_templates_error"],
        "job_templates": ["survey_spec", "credentials", "labels", "instance_groups", "notification_templates_started",
                          "notification_templates_success", "notification_templates_error"],
        "inventories": ["instance_groups", "input_inventories"],
    }

    def __init__(self, project_files):
        super().__init__(("127.0.0.1", 0), FakeAWXHandler)
        self.project_files = project_files
        self.lock = threading.Lock()
        self.objects = {}
        self.next_id = 1
        self.requests = []
        self.add("organizations", {"name": "Default"})
        self.add("credential_types", {"name": K8S_CREDENTIAL_TYPE, "kind": "kubernetes",
                                      "namespace": "kubernetes_bearer_token"})
        self.add("credential_types", {"name": "Machine", "kind": "ssh", "namespace": "ssh"})

    def add(self, collection, fields):
        item_id = self.next_id
        self.next_id += 1
        url = "/api/v2/%s/%d/" % (collection, item_id)
        item = dict(fields, id=item_id, url=url, type=collection[:-1].replace("inventorie", "inventory"),
                    related=dict((s, url + s + "/") for s in self.SUBRESOURCES.get(collection, [])),
                    summary_fields={})
        if collection == "projects":
            item.setdefault("scm_revision", "")
        self.objects.setdefault(collection, {})[item_id] = item
        return item

    def find(self, collection, query):
        def matches(item):
            alternatives = dict((k[len("or__"):], v) for k, v in query.items() if k.startswith("or__"))
            if alternatives and not any(str(item.get(k)) == v for k, v in alternatives.items()):
                return False
            return all(str(item.get(k)) == v for k, v in query.items() if not k.startswith("or__"))
        return [i for i in self.objects.get(collection, {}).values() if matches(i)]

    def of(self, collection):
        return list(self.objects.get(collection, {}).values())

    def one(self, collection, **query):
        found = self.find(collection, dict((k, str(v)) for k, v in query.items()))
        assert len(found) == 1, (collection, query, found)
        return found[0]


class FakeAWXHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-API-Product-Name", "AWX")
        self.send_header("X-API-Product-Version", "24.6.1")
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        size = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(size) or b"{}")

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_PATCH(self):
        self.handle_any("PATCH")

    def do_DELETE(self):
        self.handle_any("DELETE")

    def handle_any(self, method):
        server = self.server
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p][2:]  # after api/v2
        data = self.body() if method in ("POST", "PATCH") else None
        with server.lock:
            server.requests.append((method, url.path, data))
            status, body = self.route(server, method, parts, dict(parse_qsl(url.query)), data)
        self.reply(status, body)

    @staticmethod
    def listing(items):
        return {"count": len(items), "next": None, "previous": None, "results": items}

    def route(self, server, method, parts, query, data):
        if parts[:1] == ["tokens"]:
            return (201, {"id": 1, "token": "stand-in-token"}) if method == "POST" else (204, None)
        collection = parts[0]
        if len(parts) == 1:
            if method == "GET":
                return 200, self.listing(server.find(collection, query))
            problem = self.refuse(server, collection, data)
            if problem:
                return 400, problem
            return 201, server.add(collection, data)
        item = server.objects.get(collection, {}).get(int(parts[1]))
        if item is None:
            return 404, {"detail": "Not found."}
        if len(parts) == 2:
            if method == "PATCH":
                problem = self.refuse(server, collection, dict(item, **data))
                if problem:
                    return 400, problem
                item.update(data)
            return 200, item
        sub = parts[2]
        if collection == "projects" and sub == "update":
            update = server.add("project_updates", {"project": item["id"], "status": "successful", "failed": False,
                                                    "finished": "2026-01-01T00:00:00Z", "scm_revision": "0123abcd"})
            item["scm_revision"] = "0123abcd"
            return 202, dict(update, project_update=update["id"])
        if sub == "survey_spec":
            if method == "GET":
                return 200, item.get("_survey_spec", {})
            errors = spec_errors(data)
            if errors:
                return 400, {"error": "; ".join(errors)}
            item["_survey_spec"] = data
            return 200, None
        associated = item.setdefault("_" + sub, [])
        if method == "GET":
            return 200, self.listing([server.objects["credentials"][i] for i in associated] if sub == "credentials" else [])
        if data.get("disassociate"):
            associated.remove(data["id"])
        else:
            associated.append(data["id"])
        return 204, None

    @staticmethod
    def refuse(server, collection, data):
        if collection == "job_templates" and data.get("playbook") not in server.project_files:
            return {"playbook": ["Playbook not found for project."]}
        if collection == "credentials" and not data.get("inputs", {}).get("host"):
            return {"inputs": {"host": ["required for OpenShift or Kubernetes API Bearer Token."]}}
        return None


@pytest.fixture
def fake_awx():
    # The project as it will be: the playbooks there now and those the job templates name
    # (test_job_template_playbook_exists checks that these exist).
    files = set(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "playbooks", "*.yml")))
    server = FakeAWX(files | set("playbooks/%s.yml" % p for p in PLAYBOOKS))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


CA = "-----BEGIN CERTIFICATE-----\nMIIBstand-in\n-----END CERTIFICATE-----\n"
SETTINGS = {"awx_ee_image": "registry.example.com/gpu-resilience/fault-injection-ee:0.1.0",
            "awx_project_scm_url": "https://git.example.com/gpu-resilience/fault_injection.git",
            "awx_k8s_host": "https://127.0.0.1:6443", "awx_k8s_bearer_token": "stand-in-bearer-token",
            "awx_k8s_ssl_ca_cert": CA}


def run_configure(server, tmp_path, settings):
    env = dict(os.environ, CONTROLLER_HOST="http://127.0.0.1:%d" % server.server_address[1],
               CONTROLLER_USERNAME="admin", CONTROLLER_PASSWORD="stand-in-password", CONTROLLER_VERIFY_SSL="false",
               ANSIBLE_HOME=str(tmp_path / "ansible-home"), ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"),
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, "build", "collections"), ANSIBLE_NOCOLOR="1",
               NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    extra = tmp_path / "settings.json"
    extra.write_text(json.dumps(settings))
    playbook = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    return subprocess.run([playbook, "-i", "localhost,", os.path.join(AWX, "configure_awx.yml"), "-e", "@%s" % extra],
                          env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300, check=False)


def recap(output):
    match = re.search(r"localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", output)
    assert match, output
    return dict(zip(("ok", "changed", "unreachable", "failed"), map(int, match.groups())))


def test_configure_awx_creates_everything_and_changes_nothing_the_second_time(fake_awx, tmp_path):
    result = run_configure(fake_awx, tmp_path, SETTINGS)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "stand-in-bearer-token" not in output

    org = fake_awx.one("organizations", name="Default")
    ee = fake_awx.one("execution_environments", name="GPU fault injection")
    assert ee["image"] == SETTINGS["awx_ee_image"] and ee["organization"] == org["id"]
    project = fake_awx.one("projects", name="GPU fault injection")
    assert project["scm_url"] == SETTINGS["awx_project_scm_url"] and project["default_environment"] == ee["id"]
    assert fake_awx.of("project_updates"), "the project was never synced"
    inventory = fake_awx.one("inventories", name="GPU fault injection (localhost)")
    host = fake_awx.one("hosts", name="localhost", inventory=inventory["id"])
    assert json.loads(host["variables"]) == {"ansible_connection": "local"}
    credential = fake_awx.one("credentials", name="GPU cluster")
    assert credential["credential_type"] == fake_awx.one("credential_types", name=K8S_CREDENTIAL_TYPE)["id"]
    assert credential["inputs"] == {"host": SETTINGS["awx_k8s_host"], "bearer_token": SETTINGS["awx_k8s_bearer_token"],
                                    "verify_ssl": True, "ssl_ca_cert": CA}

    templates = fake_awx.of("job_templates")
    assert sorted(t["playbook"] for t in templates) == sorted(t["playbook"] for t in job_templates())
    for template in templates:
        wanted = [t for t in job_templates() if t["playbook"] == template["playbook"]][0]
        assert template["name"] == wanted["name"]
        assert (template["project"], template["inventory"], template["execution_environment"]) == (
            project["id"], inventory["id"], ee["id"])
        assert template["survey_enabled"] is True and template["allow_simultaneous"] is False
        assert template["_survey_spec"] == load_json(os.path.join(SURVEY_DIR, wanted["survey"]))
        assert template["_credentials"] == [credential["id"]]

    # A second run with the same settings finds everything in place; the secrets are only rewritten
    # when asked to (awx_k8s_update_secrets, default true, for token rotation).
    count = sum(len(v) for k, v in fake_awx.objects.items() if k != "project_updates")
    again = run_configure(fake_awx, tmp_path, dict(SETTINGS, awx_k8s_update_secrets=False))
    assert again.returncode == 0, again.stdout + again.stderr
    assert recap(again.stdout)["changed"] == 0, again.stdout
    assert sum(len(v) for k, v in fake_awx.objects.items() if k != "project_updates") == count


def test_configure_awx_refuses_verification_without_a_ca(fake_awx, tmp_path):
    # AWX's injector sets K8S_AUTH_VERIFY_SSL=False when the credential has no CA data, whatever
    # verify_ssl says: the playbook stops before creating anything.
    result = run_configure(fake_awx, tmp_path, dict(SETTINGS, awx_k8s_ssl_ca_cert=""))
    assert result.returncode != 0
    assert "turns verification off when no CA is given" in result.stdout
    assert fake_awx.requests == []


def test_configure_awx_without_verification_stores_no_ca(fake_awx, tmp_path):
    # One job template is enough here (each awx.awx module run takes seconds).
    result = run_configure(fake_awx, tmp_path, dict(SETTINGS, awx_k8s_ssl_ca_cert="", awx_k8s_verify_ssl=False,
                                                    awx_job_templates=job_templates()[:1]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert fake_awx.one("credentials", name="GPU cluster")["inputs"] == {
        "host": SETTINGS["awx_k8s_host"], "bearer_token": SETTINGS["awx_k8s_bearer_token"], "verify_ssl": False}


def test_detector_choices_are_the_roles_and_nvsentinels_stages_are_asked_beside_them():
    spec = load_yaml(os.path.join(ROOT, "roles", "fault_scenario", "meta", "argument_specs.yml"))
    options = spec["argument_specs"]["main"]["options"]
    for name in ("xid79_e2e", "fleet_drill"):
        questions = survey_questions(name)
        assert questions["fault_scenario_detector"]["choices"] == options["fault_scenario_detector"]["choices"]
        assert questions["fault_scenario_nvsentinel_stage"]["choices"] == options["fault_scenario_nvsentinel_stage"]["choices"]
        assert questions["fault_scenario_nvsentinel_stage"]["default"] == options["fault_scenario_nvsentinel_stage"]["default"]
    assert survey_questions("all_xids")["all_xids_detector"]["choices"] == ["gpu_healthcheck", "nvsentinel"]
