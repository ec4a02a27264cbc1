"""Open Dental, the first practice management system (PMS) behind portal/integrations/base.py."""
