"""MLproject entry points: parse MLflow parameters, call bpho. No logic here."""
