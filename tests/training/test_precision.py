"""The training copy of a base model: made with the gguf package, complete, and close in NLL."""

from pathlib import Path

import gguf

from appliance.llm.gguf_file import file_sha256
from appliance.llm.runtime import Runtime
from appliance.llm.tiny import TinyQuant
from appliance.llm.training.precision import needs_copy, training_copy

TEXT = "the quick brown fox jumps over the lazy dog and the cat sat on the mat"


def test_a_copy_is_made_only_when_some_weight_is_slower_than_asked(
    tiny_models: dict[TinyQuant, Path], tmp_path: Path
) -> None:
    assert not needs_copy(tiny_models["f32"], "q8_0")
    assert not needs_copy(tiny_models["q8_0"], "q8_0")
    assert needs_copy(tiny_models["q8_0"], "f32")
    assert not needs_copy(tiny_models["q4_0"], "same")
    served = tiny_models["f32"]
    assert training_copy(served, file_sha256(served), "q8_0", tmp_path) == served
    assert list(tmp_path.iterdir()) == []


def test_f32_copy_keeps_metadata_and_scores_like_the_original(
    tiny_models: dict[TinyQuant, Path], tmp_path: Path
) -> None:
    served = tiny_models["q4_0"]
    copy = training_copy(served, file_sha256(served), "f32", tmp_path)
    assert copy == tmp_path / f"{file_sha256(served)}-f32.gguf"
    # no temporary file is left; the lock file that serialises copy-making stays
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{copy.name}.lock", copy.name]
    original, converted = gguf.GGUFReader(served), gguf.GGUFReader(copy)
    assert {t.tensor_type for t in converted.tensors} == {gguf.GGMLQuantizationType.F32}
    assert [t.name for t in converted.tensors] == [t.name for t in original.tensors]
    for key in ("general.name", "general.license", "tokenizer.ggml.tokens", "llama.block_count"):
        assert converted.fields[key].contents() == original.fields[key].contents()
    assert converted.fields["general.file_type"].contents() == int(gguf.LlamaFileType.ALL_F32)
    scores = []
    for model in (served, copy):
        with Runtime(model, context_tokens=256, threads=2) as runtime:
            scores.append(runtime.nll([TEXT]).mean_nll)
    # quantized matmuls also round the activations (to Q8), the F32 copy does not
    assert abs(scores[0] - scores[1]) < 0.01


def test_processes_sharing_a_cache_make_the_copy_once(
    tiny_models: dict[TinyQuant, Path], tmp_path: Path
) -> None:
    """Three processes ask for the same copy at once: one converts, all get the same file."""
    import subprocess
    import sys

    served = tiny_models["q4_0"]
    code = (
        "import sys; from pathlib import Path; "
        "from appliance.llm.training.precision import training_copy; "
        "from appliance.llm.gguf_file import file_sha256; "
        "p = Path(sys.argv[1]); c = training_copy(p, file_sha256(p), 'f32', Path(sys.argv[2])); "
        "print(c.stat().st_ino)"
    )
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(served), str(tmp_path)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    inodes = {run.communicate(timeout=120)[0].strip() for run in runs}
    assert all(run.returncode == 0 for run in runs)
    assert len(inodes) == 1  # the same file: no process replaced another's copy
    assert not list(tmp_path.glob("*.tmp"))
