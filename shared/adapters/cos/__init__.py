"""COS through cos-python-sdk-v5: the client, the object store and the state store on objects."""
