"""Policy decisions, table-driven: routes, model names, images, bodies, listings, config."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from supervisor.config import TenantConfig, load_config
from supervisor.errors import ConfigError
from supervisor.policy import Plan, PolicySource, Refusal, Rule, TenantPolicy, model_key

QA_KEY = "registry.ollama.ai/library/janus-pro-7b-qa:latest"


def tenant_config(policy: dict[str, Any], variant: str = "janus-pro-7b-qa") -> TenantConfig:
    return TenantConfig.model_validate(
        {
            "user": "janus_qa",
            "models_dir": "/tmp/none",
            "socket": "/tmp/none.sock",
            "variants": [{"name": variant, "from": "janus-pro-7b"}],
            "policy": policy,
        }
    )


QA = TenantPolicy.from_config(
    "qa", tenant_config({"operations": ["read", "infer"], "models": "variants", "images": False})
)
DEV = TenantPolicy.from_config(
    "dev",
    tenant_config(
        {"operations": ["read", "infer"], "models": "variants", "images": True}, "janus-pro-7b-dev"
    ),
)
ADMIN = TenantPolicy.from_config(
    "admin", tenant_config({"operations": "all", "models": "any", "images": True})
)
BUILDER = TenantPolicy.from_config(
    "qa",
    tenant_config(
        {
            "operations": ["manage"],
            "models": ["janus-pro-7b", "janus-pro-7b-qa"],
            "max_blob_bytes": 4096,
        }
    ),
)


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("janus-pro-7b-qa", QA_KEY),
        ("Janus-Pro-7B-QA:LATEST", QA_KEY),
        ("library/janus-pro-7b-qa", QA_KEY),
        ("registry.ollama.ai/library/janus-pro-7b-qa:latest", QA_KEY),
        ("https://registry.ollama.ai/library/janus-pro-7b-qa", QA_KEY),
        ("user/m:7b", "registry.ollama.ai/user/m:7b"),
        ("host.tld:5000/ns/m", "host.tld:5000/ns/m:latest"),
        ("", None),
        ("m:", None),
        ("-m", None),
        ("a/b/c/d", None),
        ("ns.with.dots/m", None),
        ("m@sha256:" + "0" * 64, None),
        ("m:t:t", None),
        ("x" * 81, None),
    ],
)
def test_model_names_compare_as_ollama_normalises_them(name: str, key: str | None) -> None:
    assert model_key(name) == key


@pytest.mark.parametrize(
    ("policy", "method", "target", "status", "rule"),
    [
        (QA, "POST", b"/api/create", 403, Rule.OPERATION),
        (QA, "DELETE", b"/api/delete", 403, Rule.OPERATION),
        (QA, "POST", b"/api/blobs/sha256:00", 403, Rule.OPERATION),
        (QA, "HEAD", b"/api/blobs/sha256:00", 403, Rule.OPERATION),
        (QA, "POST", b"/api/%70ull", 403, Rule.OPERATION),
        (QA, "OPTIONS", b"/api/copy", 403, Rule.OPERATION),
        (QA, "GET", b"/api/experimental/web_search", 404, Rule.UNKNOWN_ROUTE),
        (QA, "GET", b"/api/chat/", 404, Rule.UNKNOWN_ROUTE),
        (QA, "GET", b"//api/tags", 404, Rule.UNKNOWN_ROUTE),
        (QA, "GET", b"/api/chat", 405, Rule.UNKNOWN_ROUTE),
        (QA, "GET", b"/api/chat%zz", 400, Rule.MALFORMED),
        (QA, "GET", b"/v1/models/janus-pro-7b", 403, Rule.MODEL),
        (DEV, "POST", b"/api/create", 403, Rule.OPERATION),
        (BUILDER, "POST", b"/api/chat", 403, Rule.OPERATION),
    ],
)
def test_request_lines_refused(
    policy: TenantPolicy, method: str, target: bytes, status: int, rule: Rule
) -> None:
    decision = policy.check_head(method, target)

    assert isinstance(decision, Refusal), decision
    assert (decision.status, decision.rule) == (status, rule)
    assert decision.message.startswith(f"tenant {policy.tenant}: ")


@pytest.mark.parametrize(
    ("policy", "method", "target", "inspect", "listing"),
    [
        (QA, "GET", b"/", False, False),
        (QA, "HEAD", b"/api/tags", False, False),
        (QA, "GET", b"/api/tags", False, True),
        (QA, "GET", b"http://localhost/api/tags?x=1", False, True),
        (QA, "GET", b"/api/ps", False, True),
        (QA, "GET", b"/v1/models", False, True),
        (QA, "GET", b"/v1/models/janus-pro-7b-qa:latest", False, False),
        (QA, "POST", b"/api/show", True, False),
        (QA, "POST", b"/api/%63hat", True, False),
        (QA, "POST", b"/v1/chat/completions", True, False),
        (QA, "OPTIONS", b"/api/chat", False, False),
        (DEV, "POST", b"/api/chat", True, False),
        (ADMIN, "POST", b"/api/chat", False, False),
        (ADMIN, "GET", b"/api/tags", False, False),
        (ADMIN, "POST", b"/api/create", False, False),
        (ADMIN, "POST", b"/api/experimental/web_search", False, False),
        (ADMIN, "GET", b"/api/chat", False, False),
    ],
)
def test_request_lines_allowed(
    policy: TenantPolicy, method: str, target: bytes, inspect: bool, listing: bool
) -> None:
    decision = policy.check_head(method, target)

    assert isinstance(decision, Plan), decision
    assert (decision.inspect, decision.listing is not None) == (inspect, listing)


def test_blob_uploads_are_streamed_with_their_own_limit() -> None:
    plan = BUILDER.check_head("POST", b"/api/blobs/sha256:" + b"0" * 64)

    assert isinstance(plan, Plan)
    assert (plan.inspect, plan.body_limit) == (False, 4096)


def image_part(kind: str) -> dict[str, Any]:
    return {"type": kind, kind: "data:image/png;base64,AAAA"}


CHAT = "/api/chat"
OK_CHAT: dict[str, Any] = {
    "model": "janus-pro-7b-qa",
    "messages": [{"role": "user", "content": "hi"}],
}


@pytest.mark.parametrize(
    ("route", "body", "status", "rule"),
    [
        (CHAT, {**OK_CHAT, "model": "janus-pro-7b"}, 403, Rule.MODEL),
        (CHAT, {**OK_CHAT, "model": "janus-pro-7b:latest"}, 403, Rule.MODEL),
        (
            CHAT,
            {**OK_CHAT, "messages": [{"role": "user", "content": "x", "images": ["AAAA"]}]},
            400,
            Rule.IMAGES,
        ),
        (CHAT, {**OK_CHAT, "messages": [{"role": "user", "IMAGES": ["AAAA"]}]}, 400, Rule.IMAGES),
        (CHAT, {**OK_CHAT, "messages": [{"role": "user", "imageſ": ["AAAA"]}]}, 400, Rule.IMAGES),
        (CHAT, {**OK_CHAT, "Model": "janus-pro-7b"}, 403, Rule.MODEL),
        (CHAT, {"messages": []}, 400, Rule.MALFORMED),
        (CHAT, {"model": 7}, 400, Rule.MALFORMED),
        (CHAT, [OK_CHAT], 400, Rule.MALFORMED),
        (
            "/api/generate",
            {"model": "janus-pro-7b-qa", "prompt": "x", "images": ["AAAA"]},
            400,
            Rule.IMAGES,
        ),
        ("/api/show", {"model": "janus-pro-7b-qa", "name": "janus-pro-7b"}, 403, Rule.MODEL),
        ("/api/embed", {"model": "all-minilm", "input": "x"}, 403, Rule.MODEL),
        (
            "/v1/chat/completions",
            {
                **OK_CHAT,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": "x"}, image_part("image_url")],
                    }
                ],
            },
            400,
            Rule.IMAGES,
        ),
        (
            "/v1/responses",
            {
                "model": "janus-pro-7b-qa",
                "input": [{"role": "user", "content": [image_part("input_image")]}],
            },
            400,
            Rule.IMAGES,
        ),
        (
            "/v1/messages",
            {
                **OK_CHAT,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "content": [{"type": "image", "source": {}}]}
                        ],
                    }
                ],
            },
            400,
            Rule.IMAGES,
        ),
        ("/v1/images/edits", {"model": "janus-pro-7b-qa", "image": "AAAA"}, 400, Rule.IMAGES),
    ],
)
def test_bodies_refused(route: str, body: Any, status: int, rule: Rule) -> None:
    plan = QA.check_head("POST", route.encode())
    assert isinstance(plan, Plan)

    refusal = QA.check_body(plan, json.dumps(body).encode())

    assert refusal is not None
    assert (refusal.status, refusal.rule) == (status, rule)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b'{"model": "janus-pro-7b-qa"} {"model": "janus-pro-7b"}', "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[" * 100000, "not valid JSON"),
    ],
)
def test_malformed_bodies_are_refused_with_the_reason(raw: bytes, why: str) -> None:
    plan = QA.check_head("POST", b"/api/chat")
    assert isinstance(plan, Plan)

    refusal = QA.check_body(plan, raw)

    assert refusal is not None and refusal.rule is Rule.MALFORMED
    assert why in refusal.message


def test_every_duplicate_model_key_is_checked() -> None:
    raw = b'{"model": "janus-pro-7b", "model": "janus-pro-7b-qa", "messages": []}'
    plan = QA.check_head("POST", b"/api/chat")
    assert isinstance(plan, Plan)

    refusal = QA.check_body(plan, raw)

    assert refusal is not None and refusal.rule is Rule.MODEL


@pytest.mark.parametrize(
    ("policy", "route", "body"),
    [
        (QA, CHAT, OK_CHAT),
        (QA, CHAT, {**OK_CHAT, "model": "Janus-Pro-7B-QA:latest"}),
        (QA, CHAT, {**OK_CHAT, "messages": [{"role": "user", "content": "x", "images": []}]}),
        (QA, "/api/show", {"name": "janus-pro-7b-qa"}),
        (
            QA,
            "/v1/chat/completions",
            {**OK_CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]},
        ),
        (
            DEV,
            CHAT,
            {
                "model": "janus-pro-7b-dev",
                "messages": [{"role": "user", "content": "x", "images": ["AAAA"]}],
            },
        ),
        (BUILDER, "/api/create", {"model": "janus-pro-7b-qa", "from": "janus-pro-7b"}),
        (BUILDER, "/api/copy", {"source": "janus-pro-7b-qa", "destination": "janus-pro-7b"}),
    ],
)
def test_bodies_allowed(policy: TenantPolicy, route: str, body: Any) -> None:
    plan = policy.check_head("POST", route.encode())
    assert isinstance(plan, Plan) and plan.inspect

    assert policy.check_body(plan, json.dumps(body).encode()) is None


def test_refusal_messages_name_tenant_rule_and_fix() -> None:
    plan = QA.check_head("POST", b"/api/chat")
    assert isinstance(plan, Plan)
    images = {**OK_CHAT, "messages": [{"role": "user", "images": ["AAAA"]}]}

    refusal = QA.check_body(plan, json.dumps(images).encode())
    model = QA.check_body(plan, json.dumps({**OK_CHAT, "model": "janus-pro-7b"}).encode())
    operation = QA.check_head("DELETE", b"/api/delete")

    assert refusal is not None and refusal.message.startswith(
        "tenant qa: images are not allowed (tenants.qa.policy.images is false)"
    )
    assert (
        model is not None
        and "'janus-pro-7b' is not allowed here (allowed: janus-pro-7b-qa)" in model.message
        and "tenants.qa.policy.models" in model.message
    )
    assert isinstance(operation, Refusal)
    assert "manage operation" in operation.message
    assert "tenants.qa.policy.operations" in operation.message


def tags(*names: str) -> bytes:
    return json.dumps({"models": [{"name": n, "model": n, "size": 1} for n in names]}).encode()


@pytest.mark.parametrize(
    ("policy", "names", "shown"),
    [
        (
            QA,
            ["janus-pro-7b:latest", "janus-pro-7b-qa:latest", "janus-pro-7b-dev:latest"],
            ["janus-pro-7b-qa:latest"],
        ),
        (QA, [], []),
        (DEV, ["janus-pro-7b:latest", "janus-pro-7b-dev:latest"], ["janus-pro-7b-dev:latest"]),
    ],
)
def test_model_lists_show_only_allowed_models(
    policy: TenantPolicy, names: list[str], shown: list[str]
) -> None:
    plan = policy.check_head("GET", b"/api/tags")
    assert isinstance(plan, Plan) and plan.listing is not None

    body = policy.filter_listing(plan.listing, tags(*names))

    assert body is not None
    assert [m["name"] for m in json.loads(body)["models"]] == shown


def test_openai_model_list_is_filtered_by_id() -> None:
    plan = QA.check_head("GET", b"/v1/models")
    assert isinstance(plan, Plan) and plan.listing is not None
    raw = json.dumps(
        {
            "object": "list",
            "data": [{"id": "janus-pro-7b:latest"}, {"id": "janus-pro-7b-qa:latest"}],
        }
    ).encode()

    body = QA.filter_listing(plan.listing, raw)

    assert body is not None and json.loads(body)["data"] == [{"id": "janus-pro-7b-qa:latest"}]


def test_unparsable_listing_is_left_alone() -> None:
    plan = QA.check_head("GET", b"/api/tags")
    assert isinstance(plan, Plan) and plan.listing is not None

    assert QA.filter_listing(plan.listing, b"oops") is None


def test_policy_source_recompiles_only_for_a_new_config() -> None:
    configs = [tenant_config({"images": False})]
    source = PolicySource("qa", lambda: configs[-1])

    first = source()
    again = source()
    configs.append(tenant_config({"images": True}))

    assert first is again and not first.images
    assert source().images


def test_default_policy_is_read_infer_own_variants_with_images() -> None:
    policy = TenantPolicy.from_config("qa", tenant_config({}))

    assert {str(o) for o in policy.operations or ()} == {"read", "infer"}
    assert policy.models == frozenset({QA_KEY})
    assert policy.images and policy.max_blob_bytes is None
    assert policy.max_body_bytes == 8 << 20


CONFIG = """\
control: {socket: ctl.sock}
state_dir: state
log_dir: log
tenants:
  qa:
    user: janus_test_qa
    create_user: true
    models_dir: models/qa
    socket: qa.sock
    policy:
{policy}
"""


@pytest.mark.parametrize(
    ("policy", "where", "text"),
    [
        ("operations: everything", "tenants.qa.policy.operations", "write a list such as"),
        ("operations: [read, all]", "tenants.qa.policy.operations", "on its own"),
        (
            "operations: [read, write]",
            "tenants.qa.policy.operations",
            "'write' is not an operation",
        ),
        ("operations: []", "tenants.qa.policy.operations", "allows nothing"),
        ("models: some", "tenants.qa.policy.models", "write variants, any, or a list"),
        ("models: [ok, 'bad name']", "tenants.qa.policy.models[1]", "not a model name"),
        ("images: maybe", "tenants.qa.policy.images", "true or false"),
        ("max_body_bytes: 10", "tenants.qa.policy.max_body_bytes", "at least 1024"),
        ("max_blob_bytes: 0", "tenants.qa.policy.max_blob_bytes", "greater than 0"),
        ("imgs: false", "tenants.qa.policy.imgs", "allowed keys here: images, max_blob_bytes"),
    ],
)
def test_bad_policy_settings_are_located_and_explained(
    tmp_path: Path, policy: str, where: str, text: str
) -> None:
    path = tmp_path / "janus.yaml"
    path.write_text(CONFIG.replace("{policy}", textwrap.indent(policy, " " * 6)))

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    problems = [p for p in caught.value.problems if p.location == where]
    assert problems, caught.value.problems
    assert text in problems[0].message
    assert problems[0].line == 11
