"""The review stage: people accept, edit or reject records on a web page, least certain first.

It reads datasets (data) and a model's answers from a predictions file, never a model itself: running
one belongs to later stages (`protege review predict` and `protege rounds` live in protege.rounds*).
"""
