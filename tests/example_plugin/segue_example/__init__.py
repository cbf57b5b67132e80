"""An example Segue plugin, packaged on its own as a third party would package it."""
