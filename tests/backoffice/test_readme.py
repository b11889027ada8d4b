"""The README's walkthrough runs as written against the demo market, served over HTTP.

The demo is seeded into the test database and served by pytest-django's live server; the
exports are the lines `seed_demo` prints for it. Then each ```sh block of "Calling the API"
marked `<!-- readme-test: run -->` runs in bash, in order, from the root of the checkout, as a
newcomer runs it: `set -euo pipefail`, the variables and functions of the blocks before it, and
`manage.py` commands on the test database. A block that fails (`curl -f` fails on a 4xx or 5xx;
a block expecting a 4xx asserts it) fails the test with its text, its output and its status.
Every ```sh block of that section carries a marker: `run`, or `skip (why)`.
"""

import os
import re
import signal
import subprocess
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings

from backoffice.demo import LISTINGS, demo_exports, demo_exports_text, seed_demo_market
from billing.models import UsageRecord
from broker.models import ComputeRequest, Contract, Incident, Replacement
from events.models import WebhookEndpoint
from marketplace.models import Listing, Node
from tests.conftest import _worker_database_url

ROOT = Path(settings.BASE_DIR)
README = ROOT / "README.md"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"  # what the README's commands call
WALKTHROUGH = "## Calling the API"
BLOCK_TIMEOUT = 60  # seconds; a block takes well under one
MARKED_BLOCK = re.compile(r"^<!-- readme-test: (?P<marker>[^>]*?) -->\n```sh\n(?P<code>.*?)^```$", re.M | re.S)

pytestmark = [
    pytest.mark.skipif(
        not VENV_PYTHON.exists(), reason="the README's commands run .venv/bin/python: create it with `make install`"
    ),
    # Transactional: the live server and the README's `manage.py` commands read what the seed committed.
    pytest.mark.django_db(transaction=True),
]


@dataclass
class Block:
    line: int
    marker: str
    code: str


def walkthrough_blocks() -> list[Block]:
    """The ```sh blocks of the walkthrough section, each with its marker and first line number."""
    text = README.read_text()
    start = text.index(WALKTHROUGH)
    end = text.find("\n## ", start + len(WALKTHROUGH))
    section = text[start : end if end != -1 else len(text)]
    blocks = [
        Block(text.count("\n", 0, start + m.start()) + 1, m["marker"], m["code"])
        for m in MARKED_BLOCK.finditer(section)
    ]
    assert section.count("```sh\n") == len(blocks), (
        f"every ```sh block of {WALKTHROUGH!r} needs a marker line before it: "
        "<!-- readme-test: run --> or <!-- readme-test: skip (why) -->"
    )
    assert all(b.marker == "run" or re.fullmatch(r"skip \(.+\)", b.marker) for b in blocks), [b.marker for b in blocks]
    return blocks


def run_block(name: str, code: str, env: dict[str, str], state: Path) -> dict[str, str]:
    """Run one block in bash with ``env``; return the environment it leaves (variables and
    functions, exported by ``set -a``) for the next block."""
    script = f'set -euo pipefail\nset -a\n{code}\nenv -0 > "{state}"\n'
    process = subprocess.Popen(
        ["bash", "-c", script],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its curl and python children are killed with it on a timeout
    )
    try:
        output, _ = process.communicate(timeout=BLOCK_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{name} did not finish in {BLOCK_TIMEOUT}s:\n{code}\n--- output ---\n{output[-4000:]}")
    if process.returncode != 0:
        pytest.fail(f"{name} failed with status {process.returncode}:\n{code}\n--- output ---\n{output[-4000:]}")
    entries = state.read_text().split("\0")
    return dict(entry.split("=", 1) for entry in entries if "=" in entry)


def test_the_walkthrough_runs_as_written_against_the_demo(live_server, tmp_path):
    blocks = walkthrough_blocks()
    exports = demo_exports(keys=seed_demo_market(), base_url=live_server.url)
    shown = next(b for b in blocks if b.marker != "run")
    assert re.findall(r"^export (\w+)=", shown.code, re.M) == [name for name, _, _ in exports], (
        "the README's example exports differ from what the demo prints"
    )
    runs = [b for b in blocks if b.marker == "run"]
    assert len(runs) >= 4, "the walkthrough's blocks lost their <!-- readme-test: run --> markers"

    env = {
        **os.environ,
        "DATABASE_URL": _worker_database_url(),  # `manage.py` commands act on the test database
        "CELERY_TASK_ALWAYS_EAGER": "true",
        "DEBUG": "true",
    }
    env = run_block("the demo's exports", demo_exports_text(exports), env, tmp_path / "env")
    for block in runs:
        env = run_block(f"the README's block at line {block.line}", block.code, env, tmp_path / "env")

    # What the walkthrough says it did, it did; the demo's own listings kept their prices.
    listing = Listing.objects.get(pk=env["LISTING"])
    assert (listing.cluster_id, listing.price_per_gpu_hour) == (int(env["CLUSTER"]), Decimal("1.95"))
    assert Node.objects.get(pk=env["NODE_ID"]).status == Node.Status.MAINTENANCE
    assert Contract.objects.get(pk=env["BOOKED"]).status == Contract.Status.TERMINATED
    assert ComputeRequest.objects.get(pk=env["REQUEST"]).status == ComputeRequest.Status.FILLED
    assert UsageRecord.objects.filter(contract_id=env["DEMO_CONTRACT"], event_id__startswith=env["NODE"]).count() == 1
    matched = Contract.objects.get(pk=env["MATCHED"])
    assert [key["id"] for key in matched.access_keys] == [int(env["KEY_ID"])] and matched.delivered_at is not None
    incident = Incident.objects.get(pk=env["INCIDENT"])
    assert incident.node_id == int(env["FAILED"]) and incident.resolved_at is not None
    assert Node.objects.get(pk=env["FAILED"]).status == Node.Status.IN_SERVICE
    assert Replacement.objects.filter(incident=incident, contract=matched).exists()
    assert WebhookEndpoint.objects.filter(pk=env["HOOK"], organization=matched.lab).exists()
    for cluster, nodes, _, _, price, mode in LISTINGS:
        demo_listing = Listing.objects.get(cluster__name=cluster, billing_mode=mode, node_count=nodes)
        assert demo_listing.price_per_gpu_hour == Decimal(price), demo_listing
