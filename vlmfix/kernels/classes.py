"""Key classes: the only vocabulary the kernels share with the methods.

Every key position of every batch row carries a small bit field. Methods never talk to the kernels about models, layers
or tokens; they only say "keys with these bits get this treatment in this head". Four bits give 16 classes, so the
per-(batch, head) parameter tables are 16 wide and a lookup is a single gather.
"""

VISUAL = 1  # an image or video token
SINK = 2  # a massive-activation token (VAR); may be text or visual
LOCAL = 4  # dual-stream: a locally informative visual token
SUMMARY = 8  # dual-stream: a summary (ViT-sink) visual token

NUM_CLASSES = 16

__all__ = ["VISUAL", "SINK", "LOCAL", "SUMMARY", "NUM_CLASSES"]
