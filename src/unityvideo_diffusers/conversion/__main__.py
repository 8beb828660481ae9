"""`python -m unityvideo_diffusers.conversion ...` is `unityvideo convert ...`."""

import sys

from ..cli import main


sys.exit(main(["convert", *sys.argv[1:]]))
