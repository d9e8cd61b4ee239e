-- A small lending library: authors write books, members borrow them (loans).
-- A loan with return_date NULL has not been returned yet. Dates are ISO text (YYYY-MM-DD).
PRAGMA foreign_keys = ON;

CREATE TABLE authors (
    author_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    birth_year INTEGER NOT NULL,
    country TEXT
);

CREATE TABLE books (
    book_id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    author_id INTEGER NOT NULL REFERENCES authors (author_id),
    genre TEXT NOT NULL,
    published_year INTEGER NOT NULL,
    pages INTEGER,
    copies INTEGER NOT NULL
);

CREATE TABLE members (
    member_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT,
    city TEXT NOT NULL,
    joined_on TEXT NOT NULL
);

CREATE TABLE loans (
    loan_id INTEGER PRIMARY KEY,
    book_id INTEGER NOT NULL REFERENCES books (book_id),
    member_id INTEGER NOT NULL REFERENCES members (member_id),
    loan_date TEXT NOT NULL,
    due_date TEXT NOT NULL,
    return_date TEXT
);

INSERT INTO authors (author_id, name, birth_year, country) VALUES
    (1, 'Harper Lane', 1948, 'USA'),
    (2, 'Tomas Ruiz', 1962, 'Spain'),
    (3, 'Amara Okafor', 1975, 'Nigeria'),
    (4, 'Ingrid Holm', 1955, 'Norway'),
    (5, 'Kenji Mori', 1981, 'Japan'),
    (6, 'Claire Dubois', 1969, 'France'),
    (7, 'Samuel Green', 1940, 'UK'),
    (8, 'Priya Nair', 1988, 'India'),
    (9, 'Lucas Weber', 1972, 'Germany'),
    (10, 'Elena Petrova', 1959, 'Russia'),
    (11, 'Marcus Bell', 1983, 'USA'),
    (12, 'Sofia Rossi', 1991, 'Italy'),
    (13, 'Daniel Cho', 1977, NULL),
    (14, 'Fatima Haddad', 1966, 'Lebanon'),
    (15, 'Oliver Grant', 1950, 'UK');

INSERT INTO books (book_id, title, author_id, genre, published_year, pages, copies) VALUES
    (1, 'The Quiet Harbor', 1, 'Fiction', 1985, 320, 3),
    (2, 'Winter Letters', 1, 'Fiction', 1992, 280, 2),
    (3, 'Salt and Stone', 2, 'History', 2001, 410, 1),
    (4, 'The Glass Orchard', 3, 'Fantasy', 2010, 512, 4),
    (5, 'River of Names', 3, 'Fiction', 2015, 298, 2),
    (6, 'Northern Lights Over Bergen', 4, 'Mystery', 1999, 350, 2),
    (7, 'The Last Ferry', 4, 'Mystery', 2004, 365, 3),
    (8, 'Paper Cranes', 5, 'Fiction', 2012, 240, 2),
    (9, 'Quantum Gardens', 5, 'Science', 2018, 430, 1),
    (10, 'A Table in Lyon', 6, 'Biography', 2008, 275, 1),
    (11, 'The Painter''s Daughter', 6, 'Fiction', 2014, 390, 2),
    (12, 'Iron Roads', 7, 'History', 1978, 460, 1),
    (13, 'The Cartographer', 7, 'History', 1983, 520, 2),
    (14, 'Monsoon Diaries', 8, 'Poetry', 2019, 120, 3),
    (15, 'Small Hours', 8, 'Poetry', 2021, 96, 2),
    (16, 'The Clockmaker''s Code', 9, 'Mystery', 2006, 345, 3),
    (17, 'Engines of Thought', 9, 'Science', 2016, 410, 2),
    (18, 'Snow on the Volga', 10, 'Fiction', 1995, 600, 1),
    (19, 'The Silent Archive', 10, 'Mystery', 2002, 330, 2),
    (20, 'Dust and Diamonds', 11, 'Fantasy', 2017, 480, 3),
    (21, 'The Dragon''s Ledger', 11, 'Fantasy', 2020, 555, 4),
    (22, 'Letters from Siena', 12, 'Biography', 2022, 210, 1),
    (23, 'The Ninth Garden', 12, 'Fantasy', 2023, 415, 2),
    (24, 'Cells and Stars', 13, 'Science', 2011, 380, 2),
    (25, 'The Long Division', 13, 'Science', 2009, NULL, 1),
    (26, 'Cedar and Salt', 14, 'History', 2005, 300, 2),
    (27, 'Beirut at Dawn', 14, 'Biography', 2013, 260, 1),
    (28, 'The Hidden Stair', 2, 'Mystery', 1997, 310, 2),
    (29, 'Moonlit Verses', 1, 'Poetry', 2000, 88, 1),
    (30, 'Beyond the Reef', 3, 'Science', 2020, 350, 2);

INSERT INTO members (member_id, name, email, city, joined_on) VALUES
    (1, 'Alice Morgan', 'alice@example.com', 'Springfield', '2019-03-14'),
    (2, 'Ben Carter', 'ben.carter@example.com', 'Riverton', '2020-07-01'),
    (3, 'Chloe Kim', NULL, 'Springfield', '2021-01-20'),
    (4, 'David Osei', 'david.osei@example.com', 'Lakeside', '2018-11-05'),
    (5, 'Emma Novak', 'emma@example.com', 'Riverton', '2022-02-28'),
    (6, 'Farid Rahimi', NULL, 'Lakeside', '2020-09-15'),
    (7, 'Grace Liu', 'grace.liu@example.com', 'Springfield', '2017-06-10'),
    (8, 'Hugo Santos', 'hugo@example.com', 'Hillcrest', '2023-04-02'),
    (9, 'Isla Fraser', 'isla.fraser@example.com', 'Riverton', '2021-08-19'),
    (10, 'Jonas Berg', NULL, 'Hillcrest', '2019-12-01'),
    (11, 'Kara Singh', 'kara@example.com', 'Lakeside', '2022-10-10'),
    (12, 'Liam Walsh', 'liam.walsh@example.com', 'Springfield', '2016-05-23'),
    (13, 'Maya Cohen', 'maya@example.com', 'Hillcrest', '2020-03-03'),
    (14, 'Noah Adams', NULL, 'Riverton', '2023-09-09'),
    (15, 'Olivia Park', 'olivia.park@example.com', 'Springfield', '2018-02-14'),
    (16, 'Pedro Alves', 'pedro@example.com', 'Lakeside', '2021-05-30'),
    (17, 'Quinn Taylor', 'quinn@example.com', 'Hillcrest', '2024-01-15'),
    (18, 'Rosa Diaz', 'rosa.diaz@example.com', 'Riverton', '2019-07-07'),
    (19, 'Sam Patel', NULL, 'Springfield', '2022-06-18'),
    (20, 'Tara Jones', 'tara@example.com', 'Lakeside', '2024-03-01');

INSERT INTO loans (loan_id, book_id, member_id, loan_date, due_date, return_date) VALUES
    (1, 1, 1, '2023-01-05', '2023-01-26', '2023-01-20'),
    (2, 4, 2, '2023-01-12', '2023-02-02', '2023-02-01'),
    (3, 6, 3, '2023-02-03', '2023-02-24', '2023-03-01'),
    (4, 16, 4, '2023-02-10', '2023-03-03', '2023-02-28'),
    (5, 21, 5, '2023-03-01', '2023-03-22', '2023-03-20'),
    (6, 9, 7, '2023-03-15', '2023-04-05', '2023-04-10'),
    (7, 4, 1, '2023-04-02', '2023-04-23', '2023-04-22'),
    (8, 11, 9, '2023-04-18', '2023-05-09', '2023-05-05'),
    (9, 20, 12, '2023-05-06', '2023-05-27', '2023-05-25'),
    (10, 14, 13, '2023-05-20', '2023-06-10', '2023-06-02'),
    (11, 7, 4, '2023-06-01', '2023-06-22', '2023-06-30'),
    (12, 18, 15, '2023-06-15', '2023-07-06', '2023-07-01'),
    (13, 20, 2, '2023-07-02', '2023-07-23', '2023-07-20'),
    (14, 3, 7, '2023-07-19', '2023-08-09', '2023-08-08'),
    (15, 24, 10, '2023-08-05', '2023-08-26', '2023-08-30'),
    (16, 1, 12, '2023-08-21', '2023-09-11', '2023-09-10'),
    (17, 16, 1, '2023-09-03', '2023-09-24', '2023-09-18'),
    (18, 23, 16, '2023-09-17', '2023-10-08', '2023-10-05'),
    (19, 8, 18, '2023-10-01', '2023-10-22', '2023-10-25'),
    (20, 4, 7, '2023-10-14', '2023-11-04', '2023-11-01'),
    (21, 5, 11, '2023-11-02', '2023-11-23', '2023-11-20'),
    (22, 19, 3, '2023-11-20', '2023-12-11', '2023-12-09'),
    (23, 21, 9, '2023-12-04', '2023-12-25', '2023-12-22'),
    (24, 12, 12, '2023-12-18', '2024-01-08', '2024-01-05'),
    (25, 17, 4, '2024-01-06', '2024-01-27', '2024-01-30'),
    (26, 20, 1, '2024-01-20', '2024-02-10', '2024-02-08'),
    (27, 2, 15, '2024-02-02', '2024-02-23', '2024-02-20'),
    (28, 26, 13, '2024-02-15', '2024-03-07', '2024-03-05'),
    (29, 6, 8, '2024-03-01', '2024-03-22', '2024-03-21'),
    (30, 30, 5, '2024-03-12', '2024-04-02', '2024-04-01'),
    (31, 4, 16, '2024-03-25', '2024-04-15', '2024-04-20'),
    (32, 16, 7, '2024-04-08', '2024-04-29', '2024-04-26'),
    (33, 10, 18, '2024-04-22', '2024-05-13', '2024-05-10'),
    (34, 21, 1, '2024-05-05', '2024-05-26', NULL),
    (35, 15, 11, '2024-05-18', '2024-06-08', NULL),
    (36, 9, 2, '2024-05-30', '2024-06-20', NULL),
    (37, 13, 12, '2024-06-03', '2024-06-24', '2024-06-21'),
    (38, 23, 17, '2024-06-10', '2024-07-01', NULL),
    (39, 7, 9, '2024-06-14', '2024-07-05', NULL),
    (40, 11, 4, '2024-06-20', '2024-07-11', NULL);
