"""One module per page of the app: runs, spike, compare, sql; each has `render(root)`."""
