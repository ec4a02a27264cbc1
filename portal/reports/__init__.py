"""Reports for managers (PRODUCT.md section 6): lab performance per lab, service and month."""
