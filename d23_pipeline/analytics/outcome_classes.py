"""The mapping from outcome codes to the classes the KPIs count (contact, RPC, promise, refusal)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from d23_pipeline.settings import SettingsError

CLASSES = ("promise", "refusal", "right_party_contact", "contact", "no_contact")


class OutcomeMappingError(ValueError):
    """The outcome mapping file is malformed; the message names the file and the problem."""


@dataclass(frozen=True)
class OutcomeClass:
    is_contact: bool
    is_rpc: bool
    is_promise: bool
    is_refusal: bool


def shown_code(code: str) -> str:
    """``code`` as reports show it: as is when it reads unambiguously, else :func:`quoted` (an
    empty code, one padded with spaces, one holding control, zero-width or bidi characters, or
    a quote), so that ``"PTP "`` does not read as PTP, an empty code is not a blank, and a code
    that holds quotes is not taken for another one quoted."""
    if code and code == code.strip() and code.isprintable() and '"' not in code:
        return code
    return quoted(code)


def quoted(code: str) -> str:
    """``code`` in quotes, each quote, backslash and character that does not print escaped."""
    return '"' + "".join(map(_shown_char, code)) + '"'


def _shown_char(char: str) -> str:
    if char in '"\\':
        return "\\" + char
    if char.isprintable():
        return char
    return f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}"


def default_mapping_path() -> Path:
    return Path(str(resources.files("d23_pipeline.analytics") / "outcome_classes.yaml"))


def mapping_version(path: Path | None = None) -> str:
    """A digest of the mapping file (the shipped one unless ``path`` is given), for the code
    version of the assets that count with it: editing the mapping then marks them stale."""
    path = path or default_mapping_path()
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise OutcomeMappingError(f"cannot read outcome mapping {path}: {exc}") from None
    return hashlib.sha256(content).hexdigest()[:16]


def load_outcome_classes(path: Path | None = None) -> dict[str, OutcomeClass]:
    """Read the mapping file (the shipped one unless ``path`` is given) into code -> class."""
    path = path or default_mapping_path()
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise OutcomeMappingError(f"cannot read outcome mapping {path}: {exc}") from None
    if not isinstance(document, dict) or set(document) - set(CLASSES):
        raise OutcomeMappingError(
            f"outcome mapping {path} must be a mapping with keys among {', '.join(CLASSES)}"
        )
    members: dict[str, set[str]] = {}
    for name in CLASSES:
        codes = document.get(name) or []
        if not isinstance(codes, list):
            raise OutcomeMappingError(f"outcome mapping {path}: {name} must be a list of codes")
        # A bare `-` is YAML's null, a slip; an agent's empty outcome is named as quoted ''.
        if not_codes := [c for c in codes if not isinstance(c, str)]:
            raise OutcomeMappingError(
                f"outcome mapping {path}: {name} lists {', '.join(map(repr, not_codes[:5]))}, "
                "not codes: a code is text (quote a number, '12'; an empty code is '')"
            )
        members[name] = set(codes)
    if not any(members.values()):
        raise OutcomeMappingError(
            f"outcome mapping {path} lists no code: every attempt would count as unmapped"
        )
    if conflict := members["no_contact"] & set().union(*(members[c] for c in CLASSES[:4])):
        raise OutcomeMappingError(
            f"outcome mapping {path}: {sorted(conflict)} listed as both contact and no_contact"
        )
    # Both would count the code in the PTP and the refusal numerators of the same attempts.
    if clash := members["promise"] & members["refusal"]:
        raise OutcomeMappingError(
            f"outcome mapping {path}: {sorted(clash)} listed as both promise and refusal"
        )
    promise = members["promise"]
    rpc = members["right_party_contact"] | promise | members["refusal"]
    contact = members["contact"] | rpc
    return {
        code: OutcomeClass(
            is_contact=code in contact,
            is_rpc=code in rpc,
            is_promise=code in promise,
            is_refusal=code in members["refusal"],
        )
        for code in contact | members["no_contact"]
    }


def check_mapping_setting(path: Path | None) -> None:
    """Raise SettingsError naming ``D23_OUTCOME_MAPPING`` if the outcome-mix steps would refuse
    the mapping file ``path`` (None: the shipped one)."""
    try:
        load_outcome_classes(path)
    except OutcomeMappingError as exc:
        raise SettingsError(f"D23_OUTCOME_MAPPING: {exc}") from None
