"""Reports for managers: lab performance per lab, service and month (the analytics of docs/sources.md source 003)."""
