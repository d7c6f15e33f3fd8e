"""mrrobust: will my MR diagnosis model still work when the scan is not clean?"""

__version__ = "0.1.0"
