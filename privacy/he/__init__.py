"""CKKS homomorphic encryption of model updates (TenSEAL).

keys     the key ceremony; who holds which key; loading and checking key files
packing  vectors as ciphertexts with check slots; the encrypted FedAvg arithmetic,
         the parameter choice and its error bound
state    the encrypted global model as the coordinator stores and sends it
node     an institution's side of an encrypted round
"""
