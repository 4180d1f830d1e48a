"""Where the recorded Label Studio bodies are: shared/ beside the checkout (CI's layout), or the
workplace's copy."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_CANDIDATES = [REPO.parent / "shared" / "docs" / "label-studio-examples",
               Path("/work/shared/docs/label-studio-examples")]
EXAMPLES = next((p for p in _CANDIDATES if p.is_dir()), _CANDIDATES[-1])
