"""Dead letters: list, show, replay (`verwijshub dlq`)."""
