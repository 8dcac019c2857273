"""Rates for invoices priced in a currency: the sources (`sources.py`) and the in-memory
book a refresher keeps warm (`book.py`). The arithmetic is in `watcher/rates.py`."""
