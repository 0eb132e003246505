"""Where the repository, the package and the yamls are."""
import os

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../recbole_gflowgr
REPO_ROOT = os.path.dirname(PACKAGE_DIR)
# the yamls of the repo's properties/ (overall, datasets, demo, ...): in a checkout there; an installed wheel carries
# them inside the package, beside recbole_gflowgr/properties/{model,finetune,tokenizer} (see setup.py)
REPO_PROPERTIES = (os.path.join(REPO_ROOT, "properties")
                   if os.path.isfile(os.path.join(REPO_ROOT, "properties", "overall.yaml"))
                   else os.path.join(PACKAGE_DIR, "properties"))
SHARED_DATA = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data")
