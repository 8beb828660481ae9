"""`python -m unityvideo_diffusers.training --config train.yaml` is `unityvideo train` (and works under
`accelerate launch -m unityvideo_diffusers.training ...`)."""

import sys

from ..cli import main


sys.exit(main(["train", *sys.argv[1:]]))
