"""Moved: knob checks are in models/knobs.py, blocks in models/blocks.py, the pooling zoo in models/pooling.py.

Only models/__init__.py still imports check_knobs from here; delete this file once it imports from knobs.
"""

from cnnlab.models.knobs import check_knobs

__all__ = ["check_knobs"]
