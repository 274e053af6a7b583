from gaflow.cli import app

app()
