"""Every shell command in README.md and docs/*.md works: each line of their ```bash blocks and each
command in the `command` column of docs/measured.md's table. Every relative link and anchor resolves, and
README's pipeline diagram is `dvc dag`.

Each command matches exactly one rule (RULES), which says how it is exercised: run as written (in the
repository when it only reads; else in a copy of the `dvc repro`-ed repo that test_pipeline.py
shares), checked without its costly part (`make -n`, an experiment queued, not run, `--help`), or marked
`# GPU only` in its page. A command that no rule covers, or a rule that matches no command,
fails. `.venv/bin/` in a command means the venv running the tests."""

import contextlib
import io
import itertools
import json
import os
import re
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest.mock
from dataclasses import dataclass
from typing import Callable

import nbformat
import pytest
import tomllib
import yaml

from msr_utils.config import DATASETS, load_params
from tests.conftest import BIN, ENV, ROOT, sh

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # shares test_pipeline's `dvc repro` (minutes)
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
GPU = "GPU only"


@dataclass(frozen=True)
class Command:
    text: str     # as a user types it (continuation lines joined), without the comment
    comment: str  # what follows ` #`, if anything

    def argv(self) -> str:
        return self.text.replace(".venv/bin/", f"{BIN}/")


def commands(markdown: str) -> list[Command]:
    """Each line of a ```bash block (blank and comment-only lines skipped), then each `snippet` in the
    `command` column of the first table that has one."""
    found = []
    for block in re.findall(r"^```bash\n(.*?)^```", markdown, flags=re.S | re.M):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            hash_ = re.search(r"(^|\s)#", line)
            text, comment = (line[:hash_.start()], line[hash_.end():]) if hash_ else (line, "")
            if text.strip():
                found.append(Command(" ".join(text.split()), comment.strip()))
    rows = [r for r in measured_table(markdown).splitlines() if r.startswith("|")]
    if not rows:
        return found
    column = [c.strip() for c in rows[0].strip("|").split("|")].index("command")
    for row in rows[2:]:
        cell = row.strip("|").split(" | ")[column]
        found += [Command(snippet, "") for snippet in re.findall(r"`([^`]+)`", cell)]
    return found


def measured_table(markdown: str) -> str:
    """The first table whose header has a `command` column ("" if none)."""
    for table in re.findall(r"(?:^\|.*\n)+", markdown, flags=re.M):
        if "command" in [c.strip() for c in table.splitlines()[0].strip("|").split("|")]:
            return table
    return ""


# --- how each kind of command is exercised ------------------------------------------------------------

def venv_is_current():
    """make would rebuild .venv (the one running these tests) if pyproject.toml were newer."""
    if subprocess.run(["make", "-q", "env"], cwd=ROOT, env=ENV).returncode != 0:
        pytest.fail(".venv is older than pyproject.toml / constraints-cpu.txt: run `make env` first")


def make_dry(command: Command, request) -> None:
    """Costly make targets (`make repro`, `make test`: test_pipeline runs what they run): `make -n`."""
    out = sh("bash", "-c", command.text.replace("make ", "make -n ", 1), cwd=ROOT)
    target, *settings = command.text.split()[1:]
    assert {"repro": "dvc repro", "test": "pytest", "lab": "jupyter lab"}[target] in out
    for setting in settings:  # VAR=value reaches the recipe (e.g. --port=9000)
        assert "=" + setting.split("=", 1)[1] + " " in out


def make_results(command: Command, request) -> None:
    """Reads only: as written, in the repository; each table as it is in results/, under its header."""
    venv_is_current()
    out = sh("bash", "-c", command.argv(), cwd=ROOT)
    datasets = yaml.safe_load((ROOT / "params.yaml").read_text())["base"]["datasets"]
    for ds in datasets:
        assert f"==> {ds} (profile " in out
        for name in ("results.md", "comparison.md"):
            assert (ROOT / "results" / ds / name).read_text().strip() in out


def activate(command: Command, request) -> None:
    assert sh("bash", "-c", f"{command.argv()} && command -v dvc", cwd=ROOT).strip() == f"{BIN}/dvc"


def run_in_workspace(command: Command, request) -> None:
    """dvc commands that read, or rerun nothing, in the reproduced copy; a row per metric or per
    experiment, short enough for a terminal."""
    out = sh("bash", "-c", command.argv(), cwd=request.getfixturevalue("workspace"))
    if command.text.startswith("dvc repro"):
        assert "Running stage" not in out  # everything up to date after `dvc repro`
        return
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert len(table) >= 3, out  # a markdown table: header, rule, rows
    if "metrics diff" in command.text:  # a row per metric
        assert len(table) > 10 and [c.strip() for c in table[0].split("|")[1:3]] == ["Path", "Metric"], out
    if "exp show" in command.text:  # the timing columns dropped
        assert not re.search(r"seconds|_per_s", table[0]), table[0]


def exp_queued(command: Command, request) -> None:
    """A sweep point reruns the pipeline (minutes): it is queued instead (dvc checks that each -S key
    exists), each queued point's params pass msr_utils.config, and the queue is emptied; `--run-all`
    is checked against the help."""
    workspace = request.getfixturevalue("workspace")
    first, *rest = command.text.split(" && ")
    sh("bash", "-c", first if "--queue" in first else first.replace("exp run", "exp run --queue", 1), cwd=workspace)
    try:
        grid = [[(key, yaml.safe_load(v)) for v in values.split(",")]
                for key, values in re.findall(r"-S (\S+?)=(\S+)", first)]
        assert sh("dvc", "queue", "status", cwd=workspace).count("Queued") == len(list(itertools.product(*grid)))
        for point in itertools.product(*grid):
            load_params(workspace / "params.yaml", dict(point))
    finally:
        sh("dvc", "queue", "remove", "--all", cwd=workspace)
    for then in rest:
        assert then.split()[-1] in sh("dvc", "exp", "run", "--help", cwd=workspace)


def run_in_copy(command: Command, request) -> None:
    """Commands that write DVC outputs or results: as written, in a copy of the reproduced repo (`/tmp/`
    moved into the test's folder); the fine-tuning CLI on a small cut (sft.limit: 8 training rows), the
    learning curve on the checkpoints the reproduced run kept."""
    tmp = request.getfixturevalue("tmp_path")
    repo = shutil.copytree(request.getfixturevalue("reproduced"), tmp / "repo", symlinks=True)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["sft"]["limit"] = 8
    params["eval"]["workers"] = 1  # the tiny model scores the curve's points faster than a process starts
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    scratch = Command(command.text.replace(" /tmp/", f" {tmp}/"), "")  # the output notebook, not the venv path
    out = sh("bash", "-c", scratch.argv(), cwd=repo)
    if "papermill" in command.text:
        executed = nbformat.read(tmp / command.text.split()[2].removeprefix("/tmp/"), as_version=4)
        given = dict(zip(re.findall(r"-p (\S+)", command.text), re.findall(r"-p \S+ (\S+)", command.text)))
        assert {k: str(v) for k, v in executed.metadata.papermill.parameters.items()} == given
    elif "msr_utils.curve" in command.text:  # the kept checkpoints of the reproduced run, after the base model
        steps = [int(line.split()[1]) for line in out.splitlines() if line.strip().startswith("step_")]
        assert steps[0] == 0 and len(steps) >= 2 and steps == sorted(steps), out
    else:
        assert json.loads(out[re.search(r"^\{$", out, re.M).start():])["steps"] > 0  # the metrics it prints last


def notebook_parameters(command: Command, request) -> None:
    """A measurement on the full data (minutes): the notebook has every parameter the command sets."""
    out = sh("papermill", "--help-notebook", command.text.split()[1], cwd=ROOT)
    for name in re.findall(r"-p (\S+)", command.text):
        assert f"  {name}:" in out


def help_lists_flags(command: Command, request) -> None:
    """Benchmarks (minutes) and the hub download (needs the hub): `--help` works and lists each flag used.
    A benchmark's --help runs in this process (its module loaded, its main() called with sys.argv set):
    a new interpreter would spend seconds importing torch for each."""
    if command.text.startswith("python benchmarks/"):
        out = script_help(ROOT / command.text.split()[1])
    else:
        out = sh("bash", "-c", " ".join(command.text.split()[:2]) + " --help", cwd=ROOT)
    for flag in re.findall(r"\s(--[\w-]+)", command.text):
        assert flag in out


def script_help(path) -> str:
    """What `python <path> --help` prints: the script loaded without its __main__ block, main() run."""
    main = runpy.run_path(str(path), run_name="benchmark")["main"]
    out = io.StringIO()
    with unittest.mock.patch.object(sys, "argv", [str(path), "--help"]), contextlib.redirect_stdout(out):
        with pytest.raises(SystemExit) as done:
            main()
    assert done.value.code == 0
    return out.getvalue()


def full_baselines(command: Command, request) -> None:
    """All users (about half an hour): `--help` lists each flag used, and the committed table it writes
    names this very command as the one that regenerates it."""
    out = sh("python", "-m", "msr_utils.baselines.full", "--help", cwd=ROOT)
    for flag in re.findall(r"\s(--[\w-]+)", command.text):
        assert flag in out
    dataset = re.search(r"--dataset (\S+)", command.text).group(1)
    assert f"Regenerate: `{command.text}`" in (ROOT / "results" / dataset / "full_data" / "baselines.md").read_text()


def pytest_collects(command: Command, request) -> None:
    """This very suite runs it: collecting it checks the path (and that `-k` selects a test)."""
    path, *select = command.text.split()[1:]
    out = sh("python", "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", path, *select, cwd=ROOT)
    assert f"{path}::test_" in out


def ci_script(command: Command, request) -> None:
    """CI builds a venv from scratch and runs `make test` (checked by make_dry): parse it, check that."""
    sh("bash", "-n", command.text.split()[1], cwd=ROOT)
    assert "make test" in (ROOT / command.text.split()[1]).read_text()


def written_file(command: Command, request) -> None:
    """A file a measurement is read from: `dvc repro` writes it."""
    assert (request.getfixturevalue("reproduced") / command.text).is_file()


def conda(command: Command, request) -> None:
    """No conda here: the file it reads names the env it activates and installs this project's extras."""
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["name"] == command.text.split()[-1]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    extras = re.search(r"-e \.\[(.+)\]", " ".join(pip)).group(1).split(",")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras) <= set(declared) and "lab" in extras


def twin_facts(command: Command, request) -> None:
    """Reads the twins `dvc repro` built: prints what they show about the official code."""
    out = sh("bash", "-c", command.argv(), cwd=request.getfixturevalue("workspace"))
    facts = json.loads(out[out.index("{"):])
    assert facts["vlm_answer_ids_after_inst"] == {"Yes": 5592, "No": 1770}
    assert facts["vlm_convert_tokens_to_ids"] == {"Yes": 5613, "No": 2501}


def cost_report(command: Command, request) -> None:
    """Reads the reproduced data and the twins: the paper profile's token count, stage by stage."""
    out = sh("bash", "-c", command.argv(), cwd=request.getfixturevalue("workspace"))
    for stage in ("02 item summaries", "03 user summaries", "04 fine-tuning", "image_first prompts: shared prefix"):
        assert stage in out
    assert "total GPU hours" in out


def several_machines(command: Command, request) -> None:
    """Needs several machines: the entry point takes the stage and dataset, and accelerate each flag used."""
    stage, dataset = re.search(r"-m msr_utils\.launch (\S+) --dataset (\S+)", command.text).groups()
    assert stage in sh("python", "-m", "msr_utils.launch", "--help", cwd=ROOT) and dataset in DATASETS
    out = sh("accelerate", "launch", "--help", cwd=ROOT)
    for flag in re.findall(r"\s(--[\w-]+)", command.text.split(" -m ")[0]):
        assert flag in out, flag


def gpu_only(command: Command, request) -> None:
    assert GPU in command.comment
    pytest.skip(f"{GPU} (marked in its page): not run here")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(command: Command, request) -> None:
    """Starts for real, as whoever runs the tests (root in containers), on a free loopback port: prints
    its URL with a token; then it is stopped."""
    venv_is_current()
    port, lines = free_port(), []
    runtime = request.getfixturevalue("tmp_path")
    proc = subprocess.Popen(["bash", "-c", f"{command.text} LAB_PORT={port}"], cwd=ROOT,
                            env={**ENV, "JUPYTER_RUNTIME_DIR": str(runtime)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    url = re.compile(rf"http://127\.0\.0\.1:{port}/lab\?token=[0-9a-f]{{16,}}")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not url.search("".join(lines)):
            time.sleep(0.5)
        assert url.search("".join(lines)), f"no URL with a token:\n{''.join(lines)[-3000:]}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # make, its shell and jupyter: one process group
        proc.wait(timeout=30)


@dataclass(frozen=True)
class Rule:
    pattern: str  # matches a whole command
    exercise: Callable[[Command, pytest.FixtureRequest], None]


RULES = [
    Rule(r"make (repro|test)", make_dry),
    Rule(r"make lab( LAB_\w+=\S+)+", make_dry),
    Rule(r"make lab", start_lab),
    Rule(r"make results", make_results),
    Rule(r"source \.venv/bin/activate", activate),
    Rule(r"dvc repro( \S+)?", run_in_workspace),
    Rule(r"(\.venv/bin/)?dvc metrics (show|diff --all) --md (--targets )?\S+", run_in_workspace),
    Rule(r"dvc exp show .*", run_in_workspace),
    Rule(r"dvc exp run (--queue )?-S (?!base\.profile=paper)\S+( -S \S+)*( && dvc exp run --run-all)?", exp_queued),
    Rule(r"\.venv/bin/papermill notebooks/\S+ /tmp/\S+ --cwd notebooks( -p \S+ \S+)+", run_in_copy),
    Rule(r"python -m msr_utils\.(sft|curve) --dataset \S+( --set \S+)*", run_in_copy),
    Rule(r"python -m msr_utils\.baselines\.full --dataset \S+( --set \S+)*", full_baselines),
    Rule(r"papermill notebooks/\S+ out\.ipynb --cwd notebooks( -p \S+ \S+)+", notebook_parameters),
    Rule(r"python benchmarks/bench_\w+\.py( --[\w-]+( \w+)?)*", help_lists_flags),
    Rule(r"hf download \S+", help_lists_flags),
    Rule(r"pytest tests/\S+\.py( -k \w+)?", pytest_collects),
    Rule(r"bash \.ci/run", ci_script),
    Rule(r"results/\S+\.json", written_file),
    Rule(r"conda env create -f environment\.yml && conda activate \S+", conda),
    Rule(r"python3\.11 -m venv \.venv && \.venv/bin/pip install -c constraints-gpu\.txt .*", gpu_only),
    Rule(r"dvc exp run -S base\.profile=paper( .*)?", gpu_only),
    Rule(r"make gpu-test", gpu_only),
    Rule(r"python -m msr_utils\.twin data/models --facts", twin_facts),
    Rule(r"python -m msr_utils\.cost --dataset \S+ (--tokens-per-s|--measured) \S+( --[\w-]+ \S+)*", cost_report),
    Rule(r"accelerate launch --multi_gpu --num_machines .* -m msr_utils\.launch \S+ --dataset \S+", several_machines),
    Rule(r"accelerate launch (?!--multi_gpu --num_machines).*", gpu_only),
]
COMMANDS = [c for page in PAGES for c in commands(page.read_text())]


def rules_of(command: Command) -> list[Rule]:
    return [r for r in RULES if re.fullmatch(r.pattern, command.text)]


def test_each_command_has_one_rule_and_each_rule_a_command():
    unmatched = [c.text for c in COMMANDS if len(rules_of(c)) != 1]
    assert not unmatched, f"commands of README.md and docs/ matched by no rule or by several: {unmatched}"
    stale = [r.pattern for r in RULES if not any(re.fullmatch(r.pattern, c.text) for c in COMMANDS)]
    assert not stale, f"rules that match no command of README.md or docs/: {stale}"
    marked = {c.text for c in COMMANDS if GPU in c.comment}
    assert marked == {c.text for c in COMMANDS if rules_of(c)[0].exercise is gpu_only}


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors: a heading in lower case, punctuation but - dropped, spaces as -."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M), flags=re.M)}


def broken_links(page) -> list[str]:
    """Relative links of a page whose file or anchor does not exist (web links are not followed)."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"\w+://", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists() or (anchor and (linked.suffix != ".md" or anchor not in anchors(linked.read_text()))):
            broken.append(target)
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(page):
    assert not broken_links(page)


def test_a_broken_link_is_caught(tmp_path):
    (tmp_path / "a.md").write_text("# Top\n## Sub section\n[ok](#sub-section) [ok](b.md#end) [bad](#nowhere)"
                                   " [bad](b.md#top) [bad](missing.md) [web](https://example.org/x#y)\n")
    (tmp_path / "b.md").write_text("# End\n```bash\n# top\n```\n")
    assert broken_links(tmp_path / "a.md") == ["#nowhere", "b.md#top", "missing.md"]


def test_each_docs_page_opens_with_what_it_answers_for_whom_and_a_command():
    for page in DOCS:
        head = page.read_text().split("\n## ", 1)[0]
        assert all(f"**{k}:**" in head for k in ("What it answers", "For whom", "Try")), page.name
        assert commands(head.split("**Try:**", 1)[1]), f"{page.name}: no command to try"


def test_readme_is_short():
    assert len(README.read_bytes()) <= 12_000


def test_readme_diagram_is_the_dvc_dag():
    """README's Mermaid edges are `dvc dag`'s, stages named without their @dataset / @variant."""
    dag = sh("dvc", "dag", "--mermaid", cwd=ROOT)
    names = {n: re.sub(r"@.*", "", name) for n, name in re.findall(r'(node\d+)\["([^"]+)"\]', dag)}
    edges = {(names[a], names[b]) for a, b in re.findall(r"(node\d+)-->(node\d+)", dag)}
    diagram = re.search(r"```mermaid\n(.*?)```", README.read_text(), flags=re.S).group(1)
    assert set(re.findall(r"(\w+) --> (\w+)", diagram)) == edges


@pytest.fixture(scope="module")
def workspace(reproduced, tmp_path_factory):
    """A copy of the reproduced repo that README's dvc commands run in (they queue experiments)."""
    return shutil.copytree(reproduced, tmp_path_factory.mktemp("workspace") / "repo", symlinks=True)


@pytest.mark.parametrize("text", dict.fromkeys(c.text for c in COMMANDS), ids=lambda t: t[:60])
def test_readme_command_works(text, request):
    command = next(c for c in COMMANDS if c.text == text)  # its first place in README.md or docs/
    (rule,) = rules_of(command)
    rule.exercise(command, request)


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.stem)
def test_each_notebook_opens_with_what_to_see_what_to_try_and_its_docs_page(path):
    """The markdown cell before the parameters cell: its parameters exist there, its docs link resolves."""
    cells = nbformat.read(path, as_version=4).cells
    at = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    intro, parameters = cells[at - 1], cells[at].source
    assert intro.cell_type == "markdown" and "**You will see:**" in intro.source and "**To try something:**" in intro.source
    names = re.findall(r"`([A-Z_]+) = [^`]+`", intro.source)
    assert names and all(re.search(rf"^{n} = ", parameters, flags=re.M) for n in names), names
    (link,) = re.findall(r"\]\((\.\./docs/[^)]+)\)", intro.source)
    page, _, anchor = link.partition("#")
    assert anchor in anchors((path.parent / page).read_text()), link
