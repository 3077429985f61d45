"""sgm: the model library (torch). Never imports engine/, nodes/ or web/."""
