"""OpenDevelop's shared core: everything the API, the admin command line and the dispatcher share."""
