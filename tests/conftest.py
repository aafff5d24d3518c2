import os
import sys

# Tests import the independent reference and the shared cases as plain modules.
sys.path.insert(0, os.path.dirname(__file__))
