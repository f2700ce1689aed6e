"""Lane schemas: which classifier labels make up which domain lane.

A schema is a YAML file (or the packaged default, ``load_schema(None)``)::

    name: my-lanes
    lanes:
      - id: science            # a short unique slug: [a-z0-9_]+
        name: Science          # for tables and reports
        labels: [Physics, Chemistry]   # the labelled data's labels that map to this lane
      - id: reserved
        name: Reserved
        labels: []             # an empty lane: kept in every table, never predicted

Lane *index* = position in ``lanes`` (0-based); every array of lane numbers (``LaneClassifier.predict``, the
bank's ``lane`` column) and every column of lane probabilities follows this order. A label maps to at most one
lane; labelled rows whose label maps to no lane are left out of training (and counted).

The default schema maps the embedded corpus's 12 topics (Wikipedia's vital-article topics: 11 plus
``Uncategorized``) onto 16 lanes, the lane count of the predecessor system; the predecessor's lane names are
not available to us, so the 4 lanes the corpus has no label for are named for domains such a system usually
separates, and stay empty.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lvmkit.errors import ConfigError

LANE_ID = re.compile(r"^[a-z0-9_]+$")

DEFAULT_SCHEMA_YAML = """\
# lvmkit's default lane schema: the embedded corpus's topics on 16 lanes (4 left empty).
name: default-16
lanes:
  - {id: people, name: People, labels: [People]}
  - {id: biology_health, name: Biology and health, labels: [Biology and health sciences]}
  - {id: geography, name: Geography, labels: [Geography]}
  - {id: physical_sciences, name: Physical sciences, labels: [Physical sciences]}
  - {id: society, name: Society and social sciences, labels: [Society and social sciences]}
  - {id: arts, name: Arts, labels: [Arts]}
  - {id: technology, name: Technology, labels: [Technology]}
  - {id: history, name: History, labels: [History]}
  - {id: everyday_life, name: Everyday life, labels: [Everyday life]}
  - {id: philosophy_religion, name: Philosophy and religion, labels: [Philosophy and religion]}
  - {id: mathematics, name: Mathematics, labels: [Mathematics]}
  - {id: general, name: General (uncategorised), labels: [Uncategorized]}
  - {id: sports, name: Sports, labels: []}
  - {id: business, name: Business and economics, labels: []}
  - {id: law, name: Law and government, labels: []}
  - {id: language, name: Language and linguistics, labels: []}
"""


class Lane(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="short unique slug, [a-z0-9_]+")
    name: str = Field(min_length=1, description="display name")
    labels: list[str] = Field(default_factory=list, description="classifier labels mapped to this lane")

    @field_validator("id")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not LANE_ID.match(v):
            raise ValueError(f"lane id {v!r} must be a slug of lowercase letters, digits and '_'")
        return v


class LaneSchema(BaseModel):
    """An ordered list of lanes; see the module docstring. Build with ``load_schema`` or ``parse_schema``."""

    model_config = ConfigDict(extra="forbid")

    name: str = "custom"
    lanes: list[Lane] = Field(min_length=2)

    @model_validator(mode="after")
    def _unique(self) -> LaneSchema:
        seen: dict[str, str] = {}
        ids = [lane.id for lane in self.lanes]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"lane ids must be unique; repeated: {', '.join(dup)}")
        for lane in self.lanes:
            for label in lane.labels:
                if label in seen:
                    raise ValueError(
                        f"label {label!r} is mapped to two lanes ({seen[label]} and {lane.id}); "
                        "a label belongs to at most one lane"
                    )
                seen[label] = lane.id
        return self

    # ---------------------------------------------------------------------------------------- queries
    def __len__(self) -> int:
        return len(self.lanes)

    @property
    def ids(self) -> list[str]:
        return [lane.id for lane in self.lanes]

    @property
    def names(self) -> list[str]:
        return [lane.name for lane in self.lanes]

    def label_to_lane(self) -> dict[str, int]:
        """``{label: lane index}`` over every mapped label."""
        return {label: i for i, lane in enumerate(self.lanes) for label in lane.labels}

    def lane_index(self, lane_id: str) -> int:
        try:
            return self.ids.index(lane_id)
        except ValueError:
            raise ConfigError(
                f"no lane {lane_id!r} in schema {self.name}; lanes: {', '.join(self.ids)}"
            ) from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def parse_schema(raw: Any, source: str = "the lane schema") -> LaneSchema:
    """Validate a schema from parsed YAML; errors name each field (``lanes.3.id: ...``)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must be a mapping with a 'lanes' list, got {type(raw).__name__}")
    try:
        return LaneSchema.model_validate(raw)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(schema)"
            problems.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError(f"invalid {source}: " + "; ".join(problems)) from None


def load_schema(path: str | Path | None = None) -> LaneSchema:
    """The schema in the YAML file ``path``; ``None`` = the packaged default (``DEFAULT_SCHEMA_YAML``)."""
    if path is None:
        return parse_schema(yaml.safe_load(DEFAULT_SCHEMA_YAML), "the default lane schema")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no lane schema file at {path} (print the default with `lvmkit lanes schema`)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"lane schema {path} is not valid YAML: {e}") from None
    return parse_schema(raw, f"lane schema {path}")
