"""Print the requirements of the core plus the named extras, from pyproject.toml (one source for the images).

    python docker/requirements.py line postgres > requirements.txt
"""
import sys
from pathlib import Path

import tomllib

project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
print("\n".join(project["dependencies"] + [d for e in sys.argv[1:] for d in project["optional-dependencies"][e]]))
