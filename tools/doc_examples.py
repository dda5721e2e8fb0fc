"""Every example in README.md and docs/*.md, produced by the code it documents (and checked against it).

    python -m tools.doc_examples --write    # rewrite every example's answer in place (after new models)
    python -m tools.doc_examples --check    # exit 1, listing each difference, when a documented answer is stale

Three kinds of section, each found by an HTML comment (invisible on GitHub) in the markdown:

``<!-- example[: NAME] [show=KEY,KEY.SUB,...] [lines=N] -->`` + a ```` ```bash ```` block holding one ``curl``
command + an answer block + ``<!-- /example -->``.
    The curl command is parsed (``-X``, ``-F name=value``, ``-F name=@file``, ``-H``, ``-d``, the URL) and sent to
    a real ``bentoml serve`` of the committed models on the CPU; the answer block shows its status (a first line
    ``HTTP 400`` when it is not 200) and body: for JSON the keys ``show`` names (dotted paths select nested keys;
    all keys when absent), floats to four decimals; for text the first ``lines`` lines (all when absent).
``<!-- example: NAME -->`` + a ```` ```console ```` block of ``$ command`` lines, each followed by its output.
    The commands run in bash in a scratch folder that holds ``samples/`` (``python`` is this interpreter); the
    output shown is each command's standard output.
``<!-- synopsis: COMMAND[ | COMMAND...] -->`` + a ```` ```text ```` block: each ``COMMAND --help``'s usage paragraph,
    verbatim.
    ``<!-- registry-table -->`` is the registry's table (``training.models.registry_table``) at the default size.

Every link to a file of the repository (``[text](path)``, outside code) must name a file that exists.

``--check`` compares each documented answer with the one produced now: the same keys, list lengths, strings,
integers and booleans; floats within half a unit of their last printed digit; text and synopses verbatim.
``--write`` replaces the answer blocks (never the requests) with the answers produced now. Both start one
server (``--url`` uses a running one instead).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
#: The markdown files whose examples are produced and checked.
DOCUMENTS = ("README.md", "docs/*.md")
WIDTH = 100  # a rendered answer line is wrapped past this many characters
DECIMALS = 4  # floats in JSON answers
HELP_COLUMNS = "100"  # argparse wraps usage lines at $COLUMNS

_MARKER = re.compile(r"^<!-- (example|synopsis|registry-table|api-table|env-table|results)(?:[: ] *(.*?))? -->$")
#: Sections that are a bare markdown table between their markers (not a fenced block).
TABLE_KINDS = ("registry-table", "api-table", "env-table", "results")
_FENCE = re.compile(r"^```(\w*)$")


# --------------------------------------------------------------------------- finding the examples


@dataclass
class Section:
    """One marked section of a markdown file: its marker and the fenced blocks inside it."""

    path: Path
    kind: str  # example | synopsis | registry-table
    argument: str  # after the marker's colon: name and options, or the synopsis' command
    line: int  # 1-based line of the marker
    blocks: list[tuple[str, list[str], int, int]] = field(default_factory=list)  # (language, lines, start, end)
    end: int = 0  # index of the closing marker's line

    @property
    def where(self) -> str:
        return f"{_shown(self.path)}:{self.line}"

    def option(self, name: str) -> str | None:
        match = re.search(rf"(?:^|\s){name}=(\S+)", self.argument)
        return match.group(1) if match else None


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _fenced_blocks(lines: list[str], start: int, end: int) -> list[tuple[str, list[str], int, int]]:
    """The fenced code blocks between two line indexes: (language, content lines, opening index, closing index)."""
    blocks, i = [], start
    while i < end:
        match = _FENCE.match(lines[i])
        if match:
            close = next(j for j in range(i + 1, len(lines)) if lines[j] == "```")
            blocks.append((match.group(1), lines[i + 1:close], i, close))
            i = close
        i += 1
    return blocks


def find_sections(path: Path) -> list[Section]:
    """Every marked section of one markdown file, in order."""
    lines = path.read_text().splitlines()
    sections = []
    for i, line in enumerate(lines):
        match = _MARKER.match(line)
        if not match:
            continue
        kind = match.group(1)
        closing = f"<!-- /{kind} -->"
        end = next((j for j in range(i + 1, len(lines)) if lines[j] == closing), None)
        if end is None:
            raise ValueError(f"{path}:{i + 1}: {line} has no {closing}")
        sections.append(Section(path, kind, (match.group(2) or "").strip(), i + 1, _fenced_blocks(lines, i + 1, end),
                                end))
    return sections


def documents(root: Path = ROOT) -> list[Path]:
    return sorted({p for pattern in DOCUMENTS for p in root.glob(pattern)})


# --------------------------------------------------------------------------- HTTP examples


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    body: str | None = None


def parse_curl(command: str, root: Path = ROOT) -> Request:
    """The request a documented ``curl`` command sends (the options the examples use, and no others)."""
    tokens = shlex.split(command.replace("\\\n", " "))
    if not tokens or tokens[0] != "curl":
        raise ValueError(f"not a curl command: {command!r}")
    request, method, i = Request("", ""), None, 1
    while i < len(tokens):
        token = tokens[i]
        if token in ("-X", "-F", "-H", "-d", "--data"):
            value, i = tokens[i + 1], i + 2
            if token == "-X":
                method = value
            elif token == "-H":
                key, _, text = value.partition(":")
                request.headers[key.strip()] = text.strip()
            elif token == "-F":
                name, _, text = value.partition("=")
                if text.startswith("@"):
                    request.files[name] = root / text[1:]
                else:
                    request.fields[name] = text
            else:
                request.body = value
            continue
        if token.startswith("http"):
            request.path = httpx.URL(token).raw_path.decode()
        elif token != "-s":
            raise ValueError(f"curl option {token!r} is not understood here")
        i += 1
    request.method = method or ("POST" if request.files or request.fields or request.body is not None else "GET")
    return request


def send(client: httpx.Client, request: Request) -> httpx.Response:
    files = {name: (path.name, path.read_bytes()) for name, path in request.files.items()}
    if files:
        return client.request(request.method, request.path, headers=request.headers, data=request.fields,
                              files=files)
    if request.fields:
        raise ValueError("form fields without a file are not used by the examples")
    return client.request(request.method, request.path, headers=request.headers, content=request.body)


def select(answer: Any, show: str | None) -> Any:
    """The keys ``show`` names (dotted paths for nested ones), in its order; everything when None."""
    if show is None:
        return answer
    selected: dict[str, Any] = {}
    for dotted in show.split(","):
        source, target, *_ = answer, selected
        keys = dotted.split(".")
        for key in keys[:-1]:
            source = source[key]
            target = target.setdefault(key, {})
        target[keys[-1]] = source[keys[-1]]
    return selected


def _inline(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if value.is_integer() else f"{value:.{DECIMALS}f}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {_inline(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    return json.dumps(value)


def render(value: Any, indent: int = 0) -> str:
    """Valid JSON, floats to DECIMALS places, a container broken over lines only when it is too wide."""
    text = _inline(value)
    if indent + len(text) <= WIDTH or not isinstance(value, dict | list):
        return text
    pad = " " * (indent + 1)
    if isinstance(value, dict):
        items = [f"{json.dumps(k)}: " + render(v, indent + 1 + len(json.dumps(k)) + 2) for k, v in value.items()]
        return "{" + f",\n{pad}".join(items) + "}"
    lines, current = [], ""
    for item in (_inline(v) for v in value):
        if current and indent + 1 + len(current) + len(item) + 2 > WIDTH:
            lines.append(current + ",")
            current = ""
        current += (", " if current else "") + item
    return "[" + f"\n{pad}".join([*lines, current]) + "]"


@dataclass
class Block:
    """A fenced block as it should read now; ``value``: a JSON answer's (status line, selected body), unrounded."""

    language: str
    lines: list[str]
    value: tuple[str, Any] | None = None


def answer_block(section: Section, response: httpx.Response) -> Block:
    """The answer block for this response."""
    status = f"HTTP {response.status_code}"
    shown_status = [] if response.status_code == 200 else [status]
    if response.headers.get("content-type", "").startswith("application/json"):
        body = select(response.json(), section.option("show"))
        return Block("json", [*shown_status, *render(body).splitlines()], (status, body))
    lines = response.text.splitlines()
    shown = int(section.option("lines") or len(lines))
    return Block("text", [*shown_status, *lines[:shown], *(["..."] if shown < len(lines) else [])])


def run_http(section: Section, client: httpx.Client) -> list[Block]:
    """The blocks of an HTTP example as they should read: the request unchanged, the answer produced now."""
    if len(section.blocks) != 2 or section.blocks[0][0] != "bash":
        raise ValueError(f"{section.where}: an HTTP example is a ```bash block with one curl command, then its answer")
    language, request_lines = section.blocks[0][:2]
    response = send(client, parse_curl("\n".join(request_lines)))
    return [Block(language, request_lines), answer_block(section, response)]


# --------------------------------------------------------------------------- command-line examples


def run_console(section: Section) -> list[Block]:
    """A console block with each ``$ command``'s output produced now, in a scratch folder holding samples/."""
    lines: list[str] = []
    commands = [line[2:] for line in section.blocks[0][1] if line.startswith("$ ")]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DIGIT_COMPARE_")},
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", "COLUMNS": HELP_COLUMNS}
    with tempfile.TemporaryDirectory(prefix="doc-examples-") as scratch:
        (Path(scratch) / "samples").symlink_to(ROOT / "samples")
        for command in commands:
            done = subprocess.run(["bash", "-c", command], cwd=scratch, env=env, capture_output=True, text=True,
                                  timeout=600)
            if done.returncode not in (0, 1):
                raise RuntimeError(f"{section.where}: `{command}` failed ({done.returncode}):\n{done.stderr[-2000:]}")
            lines += [f"$ {command}", *done.stdout.splitlines()]
    return [Block("console", lines)]


def usage(command: str) -> list[str]:
    """``COMMAND --help``'s usage paragraph (``python`` is this interpreter)."""
    words = shlex.split(command.strip())
    argv = [sys.executable if words[0] == "python" else words[0], *words[1:], "--help"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": HELP_COLUMNS})
    if done.returncode != 0:
        raise RuntimeError(f"`{command} --help` failed:\n{done.stderr[-2000:]}")
    paragraph = done.stdout.split("\n\n")[0]
    return paragraph.splitlines()


def profile_lines() -> list[str]:
    """The training profiles: what each is for (``training.profiles``' docstring) and its sizes."""
    from ensemble.tables import markdown_table
    from training import profiles

    purposes = dict(re.findall(r"^- ``(\w+)``: (.*?)(?=^- |^$|\Z)", profiles.__doc__ or "", re.MULTILINE | re.DOTALL))
    rows = [[f"`{name}`", " ".join(purposes.get(name, "").replace("``", "`").split()), str(p.width),
             str(p.feat_dim), str(p.epochs), f"{p.pairs_per_epoch:,}", str(p.batch_size),
             "all" if p.max_val_pairs is None else f"{p.max_val_pairs:,}"] for name, p in profiles.PROFILES.items()]
    return markdown_table(rows, ["profile", "what for", "width", "embedding", "epochs", "pairs per epoch", "batch",
                                 "early-stop val pairs"]).splitlines()


def results_lines(which: str, models_dir: Path = ROOT / "models") -> list[str]:
    """A results table from what the committed models record: ``headline`` (the methods on the built test split
    and the scored files) or ``models`` (each base model; ``val`` is always the whole validation file)."""
    from ensemble.tables import markdown_table

    manifest = json.loads((models_dir / "manifest.json").read_text())
    metrics = manifest["metrics"]
    test = {r["name"]: r for r in metrics["test"]["rows"]}
    scored = {path: {r["name"]: r for r in s["rows"]} for path, s in metrics.get("scored", {}).items()}
    scored_titles = [f"`{Path(path).parent.name}/{Path(path).name}` acc ({metrics['scored'][path]['n']:,}, scored only)"
                     for path in scored]
    if which == "headline":
        labels = {"best_single": f"best single (`{manifest['best_single']}`, chosen on val)",
                  "mean": "mean of the base models' probabilities", "vote": "majority vote",
                  "logreg": "logistic-regression stacking", "lightgbm": "**LightGBM stacking** (served)"}
        rows = [[label, f"{test[k]['accuracy']:.4f}", f"{test[k]['roc_auc']:.4f}", f"{test[k]['log_loss']:.4f}",
                 *(f"{s[k]['accuracy']:.4f}" for s in scored.values())] for k, label in labels.items()]
        headers = ["method", f"built test acc ({metrics['test']['n']:,})", "ROC-AUC", "log-loss", *scored_titles]
    elif which == "models":
        n_val = manifest["training"]["data"].get("n_val", "all")
        trained = {}
        if (models_dir / "training_results.json").is_file():
            trained = {r["name"]: r for r in json.loads((models_dir / "training_results.json").read_text())}
        rows = [[f"`{m['name']}`", f"{m['params']:,}", str(trained.get(m["name"], {}).get("epochs", "-")),
                 f"{m['val_acc']:.4f}", f"{test[m['name']]['accuracy']:.4f}",
                 *(f"{s[m['name']]['accuracy']:.4f}" for s in scored.values())] for m in manifest["models"]]
        headers = ["model", "parameters", "epochs", f"val acc ({n_val:,})",
                   f"built test acc ({metrics['test']['n']:,})", *scored_titles]
    else:
        raise ValueError(f"no results table {which!r} (headline, models)")
    return markdown_table(rows, headers).splitlines()


#: The routes that are not typed APIs of service.py: the mounted page, GET /info, BentoML's own.
OTHER_ROUTES = [
    ["`GET /info`", "-", "the same as `POST /info`"],
    ["`GET /ui`", "-", "the web page (`ui/`)"],
    ["`GET /healthz`, `/livez`, `/readyz`, `/metrics`", "-", "BentoML's probes and Prometheus metrics"],
]


def _default(value: Any) -> str:
    return f"`{value}`" if isinstance(value, str) else f"`{json.dumps(value)}`"


def api_lines() -> list[str]:
    """The API table: one row per typed route of service.py, from its signature and docstring, then the others."""
    from ensemble.tables import markdown_table
    from serving.api import file_fields, text_fields

    os.environ.setdefault("DIGIT_COMPARE_DEVICE", "cpu")  # importing service.py probes for a GPU otherwise
    import service

    rows = []
    for api in service.DigitCompare.apis.values():
        spec, fields = api.input_spec, api.input_spec.model_fields
        files = [f"`{n}`" + ("" if fields[n].is_required() else " (optional)") for n in file_fields(spec)]
        texts = [f"`{n}`" + ("" if fields[n].is_required() else " (optional)" if fields[n].default is None
                               else f" (default {_default(fields[n].default)})") for n in text_fields(spec)]
        json_too = not any(fields[n].is_required() for n in file_fields(spec))
        request = [f"multipart file{'s' * (len(files) > 1)} {', '.join(files)}"
                   + (" or a JSON body" if json_too else "")] if files else []
        if texts:
            request.append(f"fields {', '.join(texts)}")
        rows.append([f"`POST {api.route}`", "; ".join(request) or "-", " ".join((api.doc or "").split())])
    return markdown_table(rows + OTHER_ROUTES, ["route", "request", "answer"]).splitlines()


#: make's own variables, beside the service's settings.
MAKE_VARIABLES = [["`PORT` (make)", "`3000`", "`make serve`'s port"],
                  ["`PYTHON` (make)", "`python3.11`", "the interpreter `make` builds its venv with "
                                                      "(`.venv-python3.12` for another)"]]


def env_lines() -> list[str]:
    """The settings table: every ``DIGIT_COMPARE_*`` variable (``serving.settings.Settings``), then make's."""
    from ensemble.tables import markdown_table
    from serving.settings import Settings, variable

    rows = [[f"`{variable(name)}`", "unset" if field.default is None else _default(field.default),
             field.description or ""] for name, field in Settings.model_fields.items()]
    return markdown_table(rows + MAKE_VARIABLES, ["variable", "default", "what it sets"]).splitlines()


def registry_lines() -> list[str]:
    from training.models import registry_table
    from training.profiles import PROFILES

    default = PROFILES["default"]
    return registry_table(default.width, default.feat_dim).strip().splitlines()


# --------------------------------------------------------------------------- comparing


class PrintedNumber(float):
    """A float that remembers how many decimals it was printed with."""

    decimals: int
    text: str

    def __new__(cls, text: str) -> PrintedNumber:
        number = super().__new__(cls, text)
        number.decimals = len(text.partition(".")[2].split("e")[0].split("E")[0])
        number.text = text
        return number

    def __str__(self) -> str:
        return self.text


def _parse(lines: list[str]) -> tuple[str, Any]:
    status = lines[0] if lines and re.fullmatch(r"HTTP \d{3}", lines[0]) else "HTTP 200"
    body = "\n".join(lines[1:] if lines and lines[0] == status else lines)
    return status, json.loads(body, parse_float=PrintedNumber)


def differences(documented: Any, actual: Any, where: str = "") -> list[str]:
    """What differs between a documented JSON value and the one produced now (floats to the printed precision)."""
    if isinstance(documented, float) and isinstance(actual, float) and not isinstance(documented, bool):
        tolerance = 0.5 * 10.0 ** -getattr(documented, "decimals", DECIMALS) + 1e-9
        return [] if abs(documented - actual) <= tolerance else [f"{where or 'value'}: documented {documented}, "
                                                                 f"now {actual:.{DECIMALS + 2}f}"]
    if isinstance(documented, dict) and isinstance(actual, dict):
        if list(documented) != list(actual):
            return [f"{where or 'answer'}: documented keys {list(documented)}, now {list(actual)}"]
        return [d for k in documented for d in differences(documented[k], actual[k], f"{where}.{k}".lstrip("."))]
    if isinstance(documented, list) and isinstance(actual, list):
        if len(documented) != len(actual):
            return [f"{where}: documented {len(documented)} items, now {len(actual)}"]
        return [d for i, (a, b) in enumerate(zip(documented, actual, strict=True))
                for d in differences(a, b, f"{where}[{i}]")]
    if type(documented) is not type(actual) and not (isinstance(documented, float) and isinstance(actual, float)):
        return [f"{where or 'value'}: documented {documented!r}, now {actual!r}"]
    return [] if documented == actual else [f"{where or 'value'}: documented {documented!r}, now {actual!r}"]


def block_differences(documented: list[str], block: Block) -> list[str]:
    """What differs between a documented block and the block as produced now."""
    produced = block.lines
    if block.value is not None:
        try:
            doc_status, doc_body = _parse(documented)
        except json.JSONDecodeError as err:
            return [f"the documented answer is not JSON ({err})"]
        status, body = block.value
        status_problem = [] if doc_status == status else [f"documented {doc_status}, now {status}"]
        return status_problem + differences(doc_body, body)
    if documented != produced:
        changed = next(i for i, (a, b) in enumerate(zip([*documented, ""], [*produced, ""], strict=False)) if a != b)
        shown = produced[changed] if changed < len(produced) else "(nothing)"
        doc = documented[changed] if changed < len(documented) else "(nothing)"
        return [f"line {changed + 1} of the block: documented {doc!r}, now {shown!r}"]
    return []


# --------------------------------------------------------------------------- links

_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_INLINE_CODE = re.compile(r"`[^`]*`")


def links(path: Path) -> list[tuple[int, str]]:
    """Every markdown link and image of a file, outside code: (line number, target)."""
    found, fenced = [], False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            found += [(number, match.group(1)) for match in _LINK.finditer(_INLINE_CODE.sub("", line))]
    return found


def broken_links(paths: list[Path]) -> list[str]:
    """Each link to a file of the repository (not a URL, not an anchor in the same page) that names no file."""
    problems = []
    for path in paths:
        for number, target in links(path):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL (https:, mailto:) or a heading of this page
            if not (path.parent / target.partition("#")[0]).exists():
                problems.append(f"{_shown(path)}:{number}: the link {target} names no file")
    return problems


# --------------------------------------------------------------------------- the whole run


Producer = Callable[[Section], list[Block]]


def producer(client: httpx.Client | None) -> Producer:
    def produce(section: Section) -> list[Block]:
        if section.kind == "synopsis":
            return [Block("text", [line for command in section.argument.split("|") for line in usage(command)])]
        if section.kind == "registry-table":
            return [Block("", registry_lines())]
        if section.kind in ("api-table", "env-table"):
            return [Block("", api_lines() if section.kind == "api-table" else env_lines())]
        if section.kind == "results":
            return [Block("", profile_lines() if section.argument == "profiles" else results_lines(section.argument))]
        if section.blocks and section.blocks[0][0] == "console":
            return run_console(section)
        if client is None:
            raise RuntimeError(f"{section.where}: an HTTP example needs a server")
        return run_http(section, client)

    return produce


def _table_section_blocks(section: Section, lines: list[str]) -> list[tuple[str, list[str], int, int]]:
    """A table section's one block: the lines between its markers."""
    start = section.line  # the line after the marker, as a 0-based index
    return [("", lines[start:section.end], start - 1, section.end)]


def process(paths: list[Path], produce: Producer, write: bool) -> list[str]:
    """Check (or, with ``write``, rewrite) every marked section of these files; the problems found."""
    problems: list[str] = []
    for path in paths:
        lines = path.read_text().splitlines()
        sections = find_sections(path)
        for section in reversed(sections):  # bottom-up: rewriting a block keeps the earlier line numbers valid
            produced = produce(section)
            table = section.kind in TABLE_KINDS
            blocks = _table_section_blocks(section, lines) if table else section.blocks
            if len(produced) != len(blocks):
                problems.append(f"{section.where}: expected {len(produced)} block(s), found {len(blocks)}")
                continue
            for block, (_, old, opening, closing) in reversed(list(zip(produced, blocks, strict=True))):
                found = block_differences([ln for ln in old if ln.strip()] if table else old, block)
                problems += [f"{section.where}: {p}" for p in found]
                if write and found:
                    if table:
                        lines[opening + 1:closing] = block.lines
                    else:
                        lines[opening:closing + 1] = [f"```{block.language}", *block.lines, "```"]
        text = "\n".join(lines) + "\n"
        if write and text != path.read_text():
            path.write_text(text)
    return problems


@contextlib.contextmanager
def served(url: str | None) -> Iterator[httpx.Client]:
    """A client of ``url``, or of a fresh ``bentoml serve`` of the committed models on the CPU."""
    if url:
        with httpx.Client(base_url=url, timeout=300) as client:
            yield client
        return
    from bench.server import bentoml_serve

    with tempfile.TemporaryDirectory(prefix="doc-examples-bentoml-") as home, \
            bentoml_serve("service:DigitCompare", ROOT, {"BENTOML_HOME": home, "DIGIT_COMPARE_DEVICE": "cpu"},
                          ready_timeout=600) as server, httpx.Client(base_url=server.url, timeout=300) as client:
        yield client


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.doc_examples", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="list every stale example; exit 1 if any")
    mode.add_argument("--write", action="store_true", help="rewrite every example's answer in place")
    parser.add_argument("--url", help="a running server to ask (default: start one on the committed models)")
    parser.add_argument("files", nargs="*", type=Path, help="markdown files (default: README.md and docs/*.md)")
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.files] or documents()
    for variable in [k for k in os.environ if k.startswith("DIGIT_COMPARE_")]:
        del os.environ[variable]  # the examples show the defaults
    with served(args.url) as client:
        problems = process(paths, producer(client), write=args.write)
    unresolved = broken_links(paths)  # never rewritten: a person mends the link
    for problem in problems + unresolved:
        print(problem)
    if args.write:
        print(f"rewrote {len(problems)} stale block(s) in {', '.join(_shown(p) for p in paths)}")
        return 1 if unresolved else 0
    print(f"{len(problems)} stale block(s), {len(unresolved)} broken link(s)" if problems or unresolved
          else "every example is current and every link resolves")
    return 1 if problems or unresolved else 0


if __name__ == "__main__":
    sys.exit(main())
