"""What a wheel of earful holds: every file of the package that is not Python, by pyproject.toml's package-data."""

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_data_file_of_the_package_ships_in_its_wheel() -> None:
    """pyproject.toml's package-data named configs/*.yaml and configs/model/*.yaml; a YAML in a folder of its own
    (the study presets, configs/studies/) would have been left out of a wheel, and `pip install earful` would say
    "no such study". Every file under earful/ but Python's own is matched by a package-data pattern."""
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["earful"]
    package = REPO / "earful"
    shipped = {p for pattern in patterns for p in package.glob(pattern) if p.is_file()}
    data = {p for p in package.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")
            and "__pycache__" not in p.parts}
    assert data and not data - shipped, sorted(str(p.relative_to(package)) for p in data - shipped)
    assert any(p.parent.name == "studies" for p in shipped)  # the check saw the study presets
