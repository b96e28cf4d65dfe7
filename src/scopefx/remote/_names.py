"""The names of the registered function suite (a leaf module: the suite, the manifest and
``endpoint_info`` all need the list, and none of them may import another for it)."""

__all__ = ["FUNCTION_NAMES"]

#: The functions of :mod:`scopefx.remote.functions`, in registration order.
FUNCTION_NAMES = (
    "score_focus", "fuse_mosaic", "plan_mosaic", "fuse_region", "finish_mosaic", "endpoint_info"
)  # fmt: skip
