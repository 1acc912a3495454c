"""The documentation's links and the result files it names exist, and the trials index lists its folder."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRIALS = ROOT / "benchmarks" / "results" / "trials"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), TRIALS / "README.md"]
RESULT = re.compile(r"(?<![\w/.])((?:benchmarks/)?results/[\w<>{}/.-]+\.json)")


def headings(page: Path) -> set[str]:
    """The #anchors a Markdown page offers (GitHub's rule: lower case, punctuation dropped, spaces to '-')."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    found: set[str] = set()
    for title in re.findall(r"^#{1,6} (.+)$", text, re.M):
        slug = "".join(c for c in re.sub(r"[`*]", "", title).lower() if c.isalnum() or c in " -_").replace(" ", "-")
        n = sum(1 for s in found if s == slug or re.fullmatch(re.escape(slug) + r"-\d+", s))
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def test_every_relative_link_and_anchor_resolves():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: link {target}: no file {dest.relative_to(ROOT)}")
            elif anchor and dest.suffix == ".md" and anchor not in headings(dest):
                broken.append(f"{page.relative_to(ROOT)}: link {target}: no heading #{anchor} in {dest.name}")
    assert not broken, "\n".join(broken)


def test_every_result_file_named_exists():
    missing = []
    for page in PAGES:
        for name in RESULT.findall(page.read_text()):
            path = name if name.startswith("benchmarks/") else "benchmarks/" + name
            pattern = re.sub(r"<[^>]+>|\{[^}]+\}", "*", path)
            if not list(ROOT.glob(pattern)):
                missing.append(f"{page.relative_to(ROOT)}: {name}: no file matches {pattern}")
    assert not missing, "\n".join(missing)


def test_the_trials_index_lists_exactly_the_trial_files():
    listed = set(re.findall(r"^\| `([\w-]+\.json)` \|", (TRIALS / "README.md").read_text(), re.M))
    present = {p.name for p in TRIALS.glob("*.json")}
    assert listed == present, (f"benchmarks/results/trials/README.md: expected one line per file there; "
                               f"unlisted {sorted(present - listed)}, listed but absent {sorted(listed - present)}")
