"""Where the public benchmark logs come from: the shared folder, or a verified download.

`default_public_logs()` prefers the normalized files in `<shared>/data/routellm-evals/` (the
project never commits them). Without that folder it downloads the 57 RouteLLM MMLU response CSVs
at a pinned commit, checks each against a sha256 recorded here, and converts them to the same
normalized (Format B) JSONL in a cache directory. Nothing partial is ever left under a final name:
files are written to a temporary name and renamed only once complete and verified.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from router_model.artifact import sha256_file
from router_model.errors import RouterError
from training.cache import public_data_cache_dir

__all__ = [
    "ChecksumError",
    "MMLU_NORMALIZED_SHA256",
    "MMLU_SHA256",
    "MMLU_SUBJECTS",
    "PublicDataError",
    "ROUTELLM_BASE_URL",
    "ROUTELLM_COMMIT",
    "convert_mmlu_csvs",
    "default_public_logs",
    "download_mmlu_csvs",
    "shared_data_dir",
]

ROUTELLM_COMMIT = "0b64fdafe049e596a3f5657c219329f24af24198"
ROUTELLM_BASE_URL = (
    f"https://raw.githubusercontent.com/lm-sys/RouteLLM/{ROUTELLM_COMMIT}/routellm/evals/mmlu/responses"
)
WEAK_MODEL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG_MODEL = "gpt-4-1106-preview"
# The public pair has no list price of its own here: its dollar figures are GPT-4o-class stand-ins.
PUBLIC_PRICE_AS = {WEAK_MODEL: "gpt-4o-mini", STRONG_MODEL: "gpt-4o"}
MMLU_NORMALIZED = "routellm-mmlu.normalized.jsonl"
MTBENCH_NORMALIZED = "routellm-mtbench.normalized.jsonl"

# sha256 of routellm/evals/mmlu/responses/mmlu_<subject>.csv at ROUTELLM_COMMIT.
MMLU_SHA256: dict[str, str] = {
    "abstract_algebra": "67e564eea42e71fbfcaf616972df952c316e5538376da1c16d691177458b96b9",
    "anatomy": "53ebea8257805eeecc25713728264b8235cffad7b720962a3eafc92fd27ef537",
    "astronomy": "49915ece9dfe8aadbd351f221ada2ea86b6f832ce49fa64d1622a0f066c19794",
    "business_ethics": "13a45bed754ffe8f0e7f0348e69085c648a1ae0e91aa76cd5e6906fa45f7ec8e",
    "clinical_knowledge": "5ea37709bfbad4df7a3fcbd8973413f7645a2adfef9772490f09d3f293ffe882",
    "college_biology": "c38620db5b9f6f1b0fde7bc8d8299b8e2305c4dacbb1567c904cd51618d627d5",
    "college_chemistry": "78ca6ba22ff25c8fdb93e1c6e84384e72522106c73ed5ee9fed620928ce395ce",
    "college_computer_science": "8a7b2a87a36b428c9d1a8f12ce3b01cf7920f0a7146d6f8a111da6749c332da3",
    "college_mathematics": "3f22f42779c48509c66e21d7d1fc3054eb0256c1b5b772bb6d9a3af1b253238b",
    "college_medicine": "63d71d29e630fc6538e1705a51f4267bdbbdea0fa7ee85056ad7d6f8f10d3987",
    "college_physics": "8162a0660d4ef7b963088e0a176d4b8630096127a0d0b5ed003f649cbad34455",
    "computer_security": "26446faf7460f03aa2d82a05c170faedb5cbf6d7bdda133b1146229107097d1c",
    "conceptual_physics": "ea40473704b64cb60d564ffe91962848ec6fc3106b40089d08cebc98d5c7226d",
    "econometrics": "927b4d877cec8697f3b8378bb7e7c7a279babaea2edacf350ea50908701907b9",
    "electrical_engineering": "de2fb7c2e9addb4808f5b3f7c79efbfdfb86216235bb7dc28ab70bc53664f11e",
    "elementary_mathematics": "88697ff0d238b5852c7a959379dc8b0b45c3554ed4b2ee7cbb7ffc34e06c7cf5",
    "formal_logic": "094a462626468569ad595c03e66e73a299188cfa175248b499dba94e005506e6",
    "global_facts": "6f75ddf7d6eb94ac0471529a85ff7f8b738c9f4055185b3114eed26393222d06",
    "high_school_biology": "444982fc2c750ab8cbc6942a0c0267040aa5023c1d2364247d20e2a28b4e325d",
    "high_school_chemistry": "ae5e62479365dcd056354c568f60da65b1df9f1de57dda3953a8e9933a6f12e4",
    "high_school_computer_science": "d156d9448a6e899f7f976a0afac148a928bf709a2baa573f0c407854a25bdb11",
    "high_school_european_history": "c64afd6c5e30ef0cd5c10beab961ac05e7ba55d6b48cd93bf6ad0a45f90515bf",
    "high_school_geography": "21b12044be4a6b9813880ad46372006dc0846e7f85fa46883bb73dbd90fba30a",
    "high_school_government_and_politics": "2791689acc61775a5857f4f3a5fd248d30552553c3a96f6ee63dc28285437259",
    "high_school_macroeconomics": "73b931a2a06ba74a5c9f1e005d45a25004e36be5d075d98f8ebcf89b3fda367b",
    "high_school_mathematics": "151b2a736981b7b20f3bad99de6a573e4692d68cf87020e943b601b70bb37390",
    "high_school_microeconomics": "f7ea151efb4c9d96374db3358ac7e97e4d8349e26715f61dac98bc9d854ca046",
    "high_school_physics": "1e2103fc8f7f1cfac7c00952b26db2418acab092486af78a9c51c551ae2ff9be",
    "high_school_psychology": "d11604f2c7a2425258d5b9a285ef71737c011cc3a91456890f088a0ee4c55212",
    "high_school_statistics": "de6642bcd93d7a80e7bbd73d987a44d67b6e537b47749ddc518122fd582703bb",
    "high_school_us_history": "a71186d143363e203b2f216d78c9d21f10cca51de455ef176c9c01b77f546592",
    "high_school_world_history": "e9c52305977dc37b3e48eee727ad933b2d24d96ca3a06aec865a8900b1e87d2c",
    "human_aging": "0d6c4109b4f61f138781ce50bbc60ff2e90dd451694d3926a088be5a5bd88aa8",
    "human_sexuality": "20916037e3012731883f926738daf47ed994f74ba25518fdb7f0df72a81143fd",
    "international_law": "e389b886e3e1570bfdf798f6f56dc3c675350200c5baf0f41a0766294ff312eb",
    "jurisprudence": "7e94c3849231be7b2654db11e44ee51531f8474e300fe83b1e05438df3038f0b",
    "logical_fallacies": "fa2d94cd2e901621aaebd0a7e64560b5dbbe4249086795398533eed2561c0c1e",
    "machine_learning": "9301e928481be6e20b3541e1ac112b25a4a71338b21592978c0d219cb6240020",
    "management": "a00b12ab0265918f9335a85ce02303ddaea0491a7b099f88a05986eeac4aa4fb",
    "marketing": "3ee0b6560ebe0eb4f14ce63227d6f6ec8cb8b6e57e345eae9460be742672f36c",
    "medical_genetics": "7c830f87dcbc0029137b3400cf361931831cb57dda55717a64e72ad74663d5df",
    "miscellaneous": "c2e1a5b0394a8429f55b6340e1865166ac17ec6b3571523005e413b3b2843b9f",
    "moral_disputes": "8b2b973b1987b724f39fd10970604d7f1150747a0db9ce766c193bd978c9d0c4",
    "moral_scenarios": "78ded6fdca1cd0d5c4ed16a5ed4aebf2e98401b9c00b20e565e6cce5bf1153c7",
    "nutrition": "ba197fbf4b6c5034414d66ea7747211056cf5f709f83d919d2d856245720cc51",
    "philosophy": "2f30ad01ab529ddea00dff4ff87e950fef838a78754c94f6884120628a7d0591",
    "prehistory": "afc816d4b78814627bae9b8c3730a9bb72bd958ff6259fd36c981777cfe83753",
    "professional_accounting": "fe5ee976a625832ecf624086103619523d063a3a728c60681b6a53c55b638a37",
    "professional_law": "60a4308df4f481ff8840590b29061835207b50a9f06a9fc68baf12b114f7e2e0",
    "professional_medicine": "6fda30b523e4e2ce8b1f18e871a0722190a4ac81ec377a75fbba4a63e0b510f7",
    "professional_psychology": "bfb3a7fb653e2b195d3fa258894af64d3f1c3dbd4059c1e0feb728131d20f9b3",
    "public_relations": "2196279ea2535fbda62509c3156209b764459a3d515a9ba84b69cf16bb4c27d0",
    "security_studies": "1354bb17649f95b7dd8ef3179e22329abe6bef84e639d63370ae9e80b2509905",
    "sociology": "903ba6259b13f2877607abef22b7b19cb575104268d4ced615e3129d3caafb47",
    "us_foreign_policy": "f1c1d266753a3f161e2018c16c6948fb78c7f5e506a10b4fc0441049962a6c69",
    "virology": "d525f1ba88982befd42140e73822fe940e73db82bbdcdd569d95f26c3dd41e68",
    "world_religions": "49dc00d44e069ecaac6a7f7e2188f4a8bce5df56ee91bb15f55519d07f64af8e",
}
MMLU_SUBJECTS: tuple[str, ...] = tuple(sorted(MMLU_SHA256))
# sha256 of what convert_mmlu_csvs writes from those 57 files: a cached conversion is trusted
# only if it still has this digest (else it is rebuilt).
MMLU_NORMALIZED_SHA256 = "8764728d52f7b108204082a8e7482b24781defb7194bb323bbbabaf74037aeb2"


class PublicDataError(RouterError):
    """The public data could not be fetched or converted (network, format)."""


class ChecksumError(PublicDataError):
    """A downloaded file is not the one pinned here: `file`, `expected`, `actual` say how."""

    def __init__(self, file: str, expected: str, actual: str) -> None:
        super().__init__(f"{file}: sha256 mismatch: expected {expected}, got {actual}")
        self.file = file
        self.expected = expected
        self.actual = actual


def shared_data_dir() -> Path:
    """`$ROUTER_SHARED_DATA`, else `<repo>/../shared/data` (may not exist)."""
    env = os.environ.get("ROUTER_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"




def _atomic_target(final: Path) -> tuple[int, Path]:
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    return fd, Path(tmp)


def download_mmlu_csvs(
    dest: Path | None = None, *, base_url: str = ROUTELLM_BASE_URL, timeout_s: float = 60.0
) -> list[Path]:
    """Fetch (or reuse from `dest`) the 57 MMLU response CSVs, each verified by sha256.

    `base_url` may be a `file://` URL of a local copy (tests, offline mirrors).
    """
    dest = Path(dest) if dest is not None else public_data_cache_dir() / "routellm-mmlu-responses"
    out: list[Path] = []
    for subject in MMLU_SUBJECTS:
        name = f"mmlu_{subject}.csv"
        final = dest / name
        expected = MMLU_SHA256[subject]
        if final.is_file() and sha256_file(final) == expected:
            out.append(final)
            continue
        url = f"{base_url.rstrip('/')}/{name}"
        fd, tmp = _atomic_target(final)
        try:
            h = hashlib.sha256()
            with os.fdopen(fd, "wb") as fh:
                try:
                    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                        for chunk in iter(lambda: resp.read(1 << 20), b""):
                            h.update(chunk)
                            fh.write(chunk)
                except (urllib.error.URLError, OSError) as e:
                    raise PublicDataError(f"could not download {url}: {e}") from e
            actual = h.hexdigest()
            if actual != expected:
                raise ChecksumError(url, expected, actual)
            os.chmod(tmp, 0o644)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        out.append(final)
    return out


def convert_mmlu_csvs(csv_paths: Sequence[Path], out_path: Path) -> Path:
    """Write the RouteLLM MMLU CSVs as normalized (Format B) JSONL, atomically.

    Row i of mmlu_<subject>.csv becomes id `routellm-mmlu-<subject>-<i>`, source
    `routellm/mmlu/<subject>`, label_type `correctness`, models {Mixtral: 0/1, GPT-4: 0/1}.
    """
    fd, tmp = _atomic_target(Path(out_path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            for path in sorted(Path(p) for p in csv_paths):
                subject = path.stem.removeprefix("mmlu_")
                with path.open(newline="", encoding="utf-8") as fh:
                    reader = csv.DictReader(fh)
                    cols = ["prompt", WEAK_MODEL, STRONG_MODEL]
                    if reader.fieldnames != cols:
                        raise PublicDataError(f"{path}: expected columns {cols}, got {reader.fieldnames}")
                    for i, row in enumerate(reader):
                        models = {}
                        for m in (WEAK_MODEL, STRONG_MODEL):
                            v = row[m]
                            if v not in ("True", "False"):
                                raise PublicDataError(f"{path}: row {i}: {m} is {v!r}, expected True/False")
                            models[m] = 1.0 if v == "True" else 0.0
                        rec = {
                            "id": f"routellm-mmlu-{subject}-{i}",
                            "prompt": row["prompt"],
                            "source": f"routellm/mmlu/{subject}",
                            "label_type": "correctness",
                            "models": models,
                        }
                        out.write(json.dumps(rec, ensure_ascii=False) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, out_path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return Path(out_path)


def default_public_logs(*, base_url: str = ROUTELLM_BASE_URL) -> list[Path]:
    """The public logs to train and benchmark on: shared copies, else a verified download."""
    shared = shared_data_dir() / "routellm-evals"
    local = [shared / MMLU_NORMALIZED, shared / MTBENCH_NORMALIZED]
    if all(p.is_file() for p in local):
        return local
    root = public_data_cache_dir()
    out = root / MMLU_NORMALIZED
    if not (out.is_file() and sha256_file(out) == MMLU_NORMALIZED_SHA256):
        csvs = download_mmlu_csvs(root / "routellm-mmlu-responses", base_url=base_url)
        convert_mmlu_csvs(csvs, out)
        actual = sha256_file(out)
        if actual != MMLU_NORMALIZED_SHA256:
            out.unlink(missing_ok=True)
            raise ChecksumError(str(out), MMLU_NORMALIZED_SHA256, actual)
    return [out]
