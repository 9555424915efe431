"""Offline validation of Kubernetes manifests: standard objects and custom resources.

No API server runs where the project is built, so manifests are checked the way one would check them:

* standard objects (Deployment, Service, ...) with ``kubernetes-validate`` in strict mode, against the
  Kubernetes OpenAPI schemas of a chosen version;
* custom resources (PyTorchJob, InferenceService, KafkaTopic, TrainJob, Tenant) with JSON Schema Draft 7
  against ``spec.versions[?name==VERSION].schema.openAPIV3Schema`` of a CRD read from a directory (default:
  the CRDs cutalign ships in ``cutalign/k8s/crds``; see its README for each file's origin).

CRD schemas are *closed* before use (``additionalProperties: false`` wherever a schema lists properties and
does not preserve unknown fields). An API server prunes unknown fields of structural schemas silently, so a
misspelt field (``nprocsPerNode``) would vanish on the cluster; here it is an error. On top of the schema, the
admission rules of the Training Operator's PyTorchJob webhook (release-1.9) are checked, because they reject
jobs the schema accepts (a second Master, no ``pytorch`` container).
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

logger = logging.getLogger(__name__)

DEFAULT_KUBE_VERSION = "1.30"
HAND_WRITTEN_ANNOTATION = "cutalign.io/schema-source"
_GENERATOR_ANNOTATION = "controller-gen.kubebuilder.io/version"
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ManifestInvalid(ValueError):
    """A manifest failed validation; ``errors`` lists every problem found, each with its path."""

    def __init__(self, subject: str, errors: list[str]) -> None:
        self.subject = subject
        self.errors = errors
        super().__init__(f"{subject} is invalid:\n  - " + "\n  - ".join(errors))


@dataclass(frozen=True)
class CrdVersion:
    """One served version of a CRD, with the schema cutalign validates against."""

    crd_name: str
    group: str
    kind: str
    version: str
    source: Path
    origin: str  # "controller-gen v0.16.5" or the hand-written annotation
    schema: dict[str, Any]

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    def describe(self) -> str:
        return f"{self.crd_name} {self.version} ({self.source.name}, {self.origin})"


@dataclass(frozen=True)
class ValidationReport:
    """What was validated and against which schema, for logs and test output."""

    kind: str
    name: str
    validated_against: str


def shipped_crd_dir() -> Path:
    """The CRD directory inside the installed package."""
    return Path(str(resources.files("cutalign.k8s") / "crds"))


class CrdCatalog:
    """The CRDs of one directory, indexed by (apiVersion, kind)."""

    def __init__(self, crd_dir: Path | str | None = None) -> None:
        self.crd_dir = Path(crd_dir) if crd_dir else shipped_crd_dir()
        if not self.crd_dir.is_dir():
            raise FileNotFoundError(
                f"CRD directory {self.crd_dir} does not exist: set CUTALIGN_LAUNCHER_CRD_DIR (or --crd-dir) "
                "to a directory of CustomResourceDefinition YAMLs, or unset it to use the CRDs cutalign ships"
            )
        self._versions = {(v.api_version, v.kind): v for v in _load_crd_dir(self.crd_dir)}
        if not self._versions:
            raise FileNotFoundError(f"no CustomResourceDefinition found in {self.crd_dir}/*.yaml")
        self._validators: dict[tuple[str, str], jsonschema.Draft7Validator] = {}

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._versions

    def versions(self) -> list[CrdVersion]:
        return sorted(self._versions.values(), key=lambda v: (v.crd_name, v.version))

    def lookup(self, api_version: str, kind: str) -> CrdVersion:
        try:
            return self._versions[(api_version, kind)]
        except KeyError as e:
            known = ", ".join(f"{k} {a}" for a, k in sorted(self._versions))
            raise ManifestInvalid(
                f"{kind} ({api_version})",
                [f"no CRD for it in {self.crd_dir} (known: {known}); add its CRD YAML to that directory"],
            ) from e

    def _validator(self, crd: CrdVersion) -> jsonschema.Draft7Validator:
        """Built once per CRD version: closing the 2 MB InferenceService schema is the slow part."""
        key = (crd.api_version, crd.kind)
        if key not in self._validators:
            schema = close_schema(crd.schema)
            jsonschema.Draft7Validator.check_schema(schema)
            self._validators[key] = jsonschema.Draft7Validator(schema)
        return self._validators[key]

    def validate(self, obj: dict[str, Any]) -> ValidationReport:
        """Validate one custom resource; raises ``ManifestInvalid`` listing every error."""
        crd = self.lookup(str(obj.get("apiVersion")), str(obj.get("kind")))
        subject = _subject(obj)
        validator = self._validator(crd)
        errors = sorted(_format_error(e) for e in validator.iter_errors(obj))
        errors += _name_errors(obj)
        if crd.kind == "PyTorchJob" and isinstance(obj.get("spec"), dict):
            errors += pytorchjob_admission_errors(obj["spec"])
        if errors:
            raise ManifestInvalid(f"{subject} against {crd.describe()}", errors)
        return ValidationReport(crd.kind, _name(obj), crd.describe())


def validate_standard(obj: dict[str, Any], kube_version: str = DEFAULT_KUBE_VERSION) -> ValidationReport:
    """Validate a built-in Kubernetes object strictly (unknown fields are errors) with kubernetes-validate."""
    try:
        import kubernetes_validate.utils as kv
    except ModuleNotFoundError as e:
        raise ValueError(
            "validating standard Kubernetes objects needs kubernetes-validate, a development tool: "
            "pip install 'cutalign[dev]' (custom resources validate without it)"
        ) from e
    subject = _subject(obj)
    try:
        version = kv.validate(obj, kube_version, strict=True)
    except kv.ValidationError as e:
        raise ManifestInvalid(subject, [_format_error(e)]) from e
    except kv.SchemaNotFoundError as e:
        raise ManifestInvalid(subject, [e.message + "; if it is a custom resource, add its CRD"]) from e
    except kv.VersionNotSupportedError as e:
        raise ValueError(
            f"kubernetes-validate has no schemas for Kubernetes {kube_version}: choose {kv.latest_version()} "
            "or older (--kube-version)"
        ) from e
    return ValidationReport(
        str(obj["kind"]), _name(obj), f"Kubernetes {version} (kubernetes-validate, strict)"
    )


def validate_manifests(
    objs: Iterable[dict[str, Any]], catalog: CrdCatalog, kube_version: str = DEFAULT_KUBE_VERSION
) -> list[ValidationReport]:
    """Validate every object (custom resources by CRD, others by kubernetes-validate); fail once, with all."""
    reports: list[ValidationReport] = []
    errors: list[str] = []
    for obj in objs:
        try:
            if (str(obj.get("apiVersion")), str(obj.get("kind"))) in catalog:
                reports.append(catalog.validate(obj))
            else:
                reports.append(validate_standard(obj, kube_version))
        except ManifestInvalid as e:
            errors += [f"{e.subject}: {err}" for err in e.errors]
    if errors:
        raise ManifestInvalid(f"{len(errors)} problem(s) in the manifests", errors)
    return reports


def load_manifests(text: str) -> list[dict[str, Any]]:
    """Parse a multi-document YAML stream (``helm template`` output), dropping empty documents."""
    return [d for d in yaml.load_all(text, Loader=_YAML_LOADER) if d]


def pytorchjob_admission_errors(spec: dict[str, Any]) -> list[str]:
    """The checks of the Training Operator's PyTorchJob validating webhook (release-1.9), offline."""
    errors: list[str] = []
    replicas = spec.get("pytorchReplicaSpecs") or {}
    if not replicas:
        errors.append("spec.pytorchReplicaSpecs: must be set")
    for rtype, rspec in replicas.items():
        path = f"spec.pytorchReplicaSpecs.{rtype}"
        if rtype not in ("Master", "Worker"):
            errors.append(f"{path}: replica type must be Master or Worker")
        count = rspec.get("replicas")
        if rtype == "Master" and count != 1:
            errors.append(f"{path}.replicas: must be exactly 1 (got {count})")
        if rtype == "Worker" and count is not None and count < 1:
            errors.append(f"{path}.replicas: must be at least 1 (got {count})")
        containers = ((rspec.get("template") or {}).get("spec") or {}).get("containers") or []
        if not any(c.get("name") == "pytorch" for c in containers):
            errors.append(f"{path}.template.spec.containers: needs a container named 'pytorch'")
        errors += [
            f"{path}.template.spec.containers[{i}].image: must be set"
            for i, c in enumerate(containers)
            if not c.get("image")
        ]
    elastic = spec.get("elasticPolicy")
    if elastic is not None:
        if "Worker" not in replicas:
            errors.append("spec.pytorchReplicaSpecs.Worker: must be configured if elastic policy is used")
        if elastic.get("nProcPerNode") is not None and spec.get("nprocPerNode") is not None:
            errors.append("spec.elasticPolicy.nProcPerNode: must not be used with spec.nprocPerNode")
    return errors


def close_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` where every object listing ``properties`` rejects properties it does not list.

    Nodes that preserve unknown fields, or that say what extra properties may be, are left as they are.
    """
    closed = copy.deepcopy(schema)
    for node in _schema_nodes(closed):
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
    return closed


def _schema_nodes(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _schema_nodes(value)
    elif isinstance(node, list):
        for item in node:
            yield from _schema_nodes(item)


def _load_crd_dir(crd_dir: Path) -> Iterator[CrdVersion]:
    for path in sorted(crd_dir.glob("*.yaml")):
        for doc in yaml.load_all(path.read_text(), Loader=_YAML_LOADER):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            annotations = doc.get("metadata", {}).get("annotations") or {}
            origin = annotations.get(HAND_WRITTEN_ANNOTATION) or (
                f"controller-gen {annotations[_GENERATOR_ANNOTATION]}"
                if _GENERATOR_ANNOTATION in annotations
                else "origin not recorded"
            )
            spec = doc["spec"]
            for version in spec["versions"]:
                yield CrdVersion(
                    crd_name=doc["metadata"]["name"],
                    group=spec["group"],
                    kind=spec["names"]["kind"],
                    version=version["name"],
                    source=path,
                    origin=origin,
                    schema=version["schema"]["openAPIV3Schema"],
                )


def _name_errors(obj: dict[str, Any]) -> list[str]:
    """Kubeflow controllers derive Service and pod names from a job's name: it must be a DNS-1035 label."""
    name = _name(obj)
    if not name:
        return ["metadata.name: must be set"]
    if obj.get("kind") in ("PyTorchJob", "TrainJob") and (not _DNS1035.match(name) or len(name) > 63):
        return [f"metadata.name: {name!r} must be a DNS-1035 label (lower-case, starts with a letter, <= 63)"]
    return []


def _format_error(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path) or "(root)"
    return f"{path}: {error.message}"


def _name(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


def _subject(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{_name(obj) or '?'} ({obj.get('apiVersion')})"
