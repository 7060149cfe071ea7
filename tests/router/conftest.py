import sys
from pathlib import Path

# fake_worker.py lives next to the tests that use it.
sys.path.insert(0, str(Path(__file__).parent))
