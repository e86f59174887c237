<?php
printf("hello from php %d.%d: %d\n", PHP_MAJOR_VERSION, PHP_MINOR_VERSION, array_sum(range(1, 100)));
