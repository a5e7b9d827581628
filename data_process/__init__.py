"""Data preparation before training: fetch_dataset.py and process_data.py, with their logic in the modules here."""
