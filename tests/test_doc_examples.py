"""Every example in README.md and docs/ is what the code answers now (``tools/doc_examples.py``).

One real ``bentoml serve`` of the committed models (CPU, default settings) answers every documented request;
command-line examples run, synopses are compared with ``--help``, results tables with ``models/manifest.json``.
A second test edits documented values and checks that the comparison reports each of them, so the first one
cannot pass by comparing nothing. The API table comes from service.py's signatures and the settings table from
``serving.settings.Settings``; the latter is also checked against every variable the code names and the defaults
the served ``/info`` reports.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import httpx
import pytest

from tests.server_process import bentoml_serve
from tools.doc_examples import ROOT, PrintedNumber, differences, documents, find_sections, parse_curl, process
from tools.doc_examples import producer as producer_of

pytestmark = pytest.mark.slow
REGENERATE = "regenerate them with: python -m tools.doc_examples --write"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    # serve_repository's environment (CPU, a private BentoML home), with time to start on a loaded machine.
    env = {"BENTOML_HOME": str(tmp_path_factory.mktemp("bentoml")), "DIGIT_COMPARE_DEVICE": "cpu"}
    with bentoml_serve("service:DigitCompare", ROOT, env, ready_timeout=600) as server, \
            httpx.Client(base_url=server.url, timeout=300) as c:
        yield c


def test_every_documented_example_is_what_the_code_answers(client):
    paths = documents()
    assert ROOT / "README.md" in paths
    sections = [s for path in paths for s in find_sections(path)]
    kinds = {s.kind for s in sections}
    assert {"example", "synopsis", "results", "registry-table", "api-table", "env-table"} <= kinds
    assert sum(s.kind == "example" for s in sections) >= 6  # the README's requests and its console session
    problems = process(paths, producer_of(client), write=False)
    assert not problems, "stale examples:\n" + "\n".join(problems) + f"\n{REGENERATE}"


def _example(path: Path, name: str) -> str:
    """One example section of a file, markers included, by its name."""
    text = path.read_text()
    match = re.search(rf"^<!-- example: {re.escape(name)}\b.*?^<!-- /example -->$", text, re.MULTILINE | re.DOTALL)
    assert match, f"{path} has no example {name!r}"
    return match.group(0)


def _shift_last_digit(match: re.Match) -> str:
    text = match.group(0)
    return text[:-1] + str((int(text[-1]) + 2) % 10)


def test_an_example_edited_to_a_wrong_value_fails(client, tmp_path):
    """A probability off by two units in its last printed digit, a label flipped and a model renamed are each
    reported, naming the field; the unedited copies pass."""
    readme = ROOT / "README.md"
    pair, csv_answer, info = (_example(readme, n) for n in ("compare-pair", "compare-batch-csv", "info"))
    good = tmp_path / "good.md"
    good.write_text("\n\n".join([pair, csv_answer, info]) + "\n")
    assert process([good], producer_of(client), write=False) == []

    wrong_pair = re.sub(r'(?<="probability": )\d\.\d+', _shift_last_digit, pair, count=1)
    wrong_csv = re.sub(r"^(SAMPLE_\d+),([01])$", lambda m: f"{m.group(1)},{1 - int(m.group(2))}", csv_answer,
                       count=1, flags=re.MULTILINE)
    best = re.search(r'"best_single": "(\w+)"', info).group(1)
    wrong_info = info.replace(f'"best_single": "{best}"', f'"best_single": "{best}_renamed"')
    assert wrong_pair != pair and wrong_csv != csv_answer and wrong_info != info
    bad = tmp_path / "bad.md"
    bad.write_text("\n\n".join([wrong_pair, wrong_csv, wrong_info]) + "\n")
    problems = process([bad], producer_of(client), write=False)
    assert len(problems) == 3, problems
    assert any(re.search(r"bad\.md:1: probability: documented \d\.\d+, now", p) for p in problems), problems
    assert any("line 2 of the block: documented 'SAMPLE_" in p for p in problems), problems
    assert any(f"best_single: documented '{best}_renamed', now '{best}'" in p for p in problems), problems
    # --write puts the answers back: the rewritten file passes and reads as the good one.
    assert len(process([bad], producer_of(client), write=True)) == 3
    assert bad.read_text() == good.read_text()


def test_floats_are_compared_to_their_printed_precision():
    assert differences({"p": PrintedNumber("0.0330")}, {"p": 0.03304}) == []
    assert differences({"p": PrintedNumber("0.0330")}, {"p": 0.03296}) == []
    assert differences({"p": PrintedNumber("0.0330")}, {"p": 0.03306}) != []
    assert differences({"p": PrintedNumber("0.03")}, {"p": 0.0349}) == []  # two decimals printed: half a hundredth
    assert differences({"n": 16}, {"n": 17}) != [] and differences({"b": False}, {"b": 0}) != []
    assert differences({"a": 1}, {"a": 1, "b": 2}) != []  # a field the example does not show is reported
    assert differences([1, 2], [1, 2, 3]) != []


def test_curl_commands_are_parsed_as_curl_sends_them():
    request = parse_curl("curl -X POST http://localhost:3000/compare -F left=@samples/a.png -F prior=uniform")
    assert (request.method, request.path, request.fields) == ("POST", "/compare", {"prior": "uniform"})
    assert request.files == {"left": ROOT / "samples" / "a.png"}
    request = parse_curl("curl -X POST http://x/compare_batch -H 'content-type: application/json' -d '{\"a\": 1}'")
    assert request.headers == {"content-type": "application/json"} and json.loads(request.body) == {"a": 1}
    assert parse_curl("curl http://localhost:3000/info").method == "GET"
    with pytest.raises(ValueError, match="--compressed"):
        parse_curl("curl --compressed http://localhost:3000/info")


# --------------------------------------------------------------------------- the settings table


def _settings_in_code() -> set[str]:
    """Every DIGIT_COMPARE_* name the product reads: its settings, and any written as a string in its code."""
    from serving.settings import Settings, variable

    files = [ROOT / "service.py", *(p for package in ("ensemble", "serving", "training", "export")
                                    for p in (ROOT / package).rglob("*.py"))]
    return {variable(name) for name in Settings.model_fields} | {
        node.value for path in files for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        and re.fullmatch(r"DIGIT_COMPARE_[A-Z0-9_]+", node.value)}


SETTINGS_DOC = ROOT / "docs" / "api.md"


def _settings_table() -> dict[str, str]:
    text = SETTINGS_DOC.read_text()
    table = re.search(r"<!-- env-table -->\n(.*?)<!-- /env-table -->", text, re.DOTALL)
    assert table, f"{SETTINGS_DOC} has no <!-- env-table --> section"
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.group(1).splitlines()[2:]]
    return {row[0].split()[0].strip("`"): row[1] for row in rows}


#: Where /info reports the setting each variable changes.
INFO_KEYS = {"DIGIT_COMPARE_MAX_BATCH_SIZE": ("batching", "max_batch_size"),
             "DIGIT_COMPARE_MAX_LATENCY_MS": ("batching", "max_latency_ms"),
             "DIGIT_COMPARE_MAX_PAIRS": ("limits", "max_pairs_per_request"),
             "DIGIT_COMPARE_MAX_REQUEST_BYTES": ("limits", "max_request_bytes"),
             "DIGIT_COMPARE_BODY_IDLE_TIMEOUT_S": ("limits", "body_idle_timeout_s"),
             "DIGIT_COMPARE_BODY_TIMEOUT_S": ("limits", "body_timeout_s")}


def test_the_settings_table_lists_every_variable_with_its_served_default(client):
    table = _settings_table()
    documented = {name for name in table if name.startswith("DIGIT_COMPARE_")}
    in_code = _settings_in_code()
    assert len(in_code) >= 8  # the scan finds the variables
    assert documented == in_code, f"undocumented: {sorted(in_code - documented)}; " \
                                  f"not in the code: {sorted(documented - in_code)}"
    info = client.get("/info").json()
    for name, (group, key) in INFO_KEYS.items():
        default = float(re.match(r"`([\d.]+)`", table[name]).group(1))
        assert default == info[group][key], f"{name}: docs/api.md says {default}, /info {info[group][key]}"
