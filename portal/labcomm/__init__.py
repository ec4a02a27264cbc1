"""How a lab hears from the practice: the one place that decides by the lab's channel."""
